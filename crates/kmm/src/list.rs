//! Doubly linked lists of page frames threaded through `page->lru`
//! (`include/linux/list.h`), with 32-bit frame numbers as links.
//!
//! The caller holds whatever lock protects the list; the link fields are
//! atomics only so that `mem_map` can be shared, and are accessed with relaxed
//! ordering.

use crate::mm_types::{Page, NIL};
use core::sync::atomic::Ordering::Relaxed;

/// A list head: first and last frame, or [`NIL`] for an empty list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ListHead {
    pub(crate) head: u32,
    pub(crate) tail: u32,
}

impl ListHead {
    /// `LIST_HEAD_INIT`.
    pub(crate) const EMPTY: ListHead = ListHead {
        head: NIL,
        tail: NIL,
    };

    /// `list_add()`: insert at the front.
    #[inline(always)]
    pub(crate) fn push_front(&mut self, map: &[Page], pfn: u32) {
        let p = &map[pfn as usize];
        p.prev.store(NIL, Relaxed);
        p.next.store(self.head, Relaxed);
        if self.head == NIL {
            self.tail = pfn;
        } else {
            map[self.head as usize].prev.store(pfn, Relaxed);
        }
        self.head = pfn;
    }

    /// `list_add_tail()`: insert at the back.
    #[inline(always)]
    pub(crate) fn push_back(&mut self, map: &[Page], pfn: u32) {
        let p = &map[pfn as usize];
        p.next.store(NIL, Relaxed);
        p.prev.store(self.tail, Relaxed);
        if self.tail == NIL {
            self.head = pfn;
        } else {
            map[self.tail as usize].next.store(pfn, Relaxed);
        }
        self.tail = pfn;
    }

    /// Removes and returns the first frame.
    #[inline(always)]
    pub(crate) fn pop_front(&mut self, map: &[Page]) -> Option<u32> {
        let pfn = self.head;
        if pfn == NIL {
            return None;
        }
        self.remove(map, pfn);
        Some(pfn)
    }

    /// Removes and returns the last frame.
    #[inline(always)]
    pub(crate) fn pop_back(&mut self, map: &[Page]) -> Option<u32> {
        let pfn = self.tail;
        if pfn == NIL {
            return None;
        }
        self.remove(map, pfn);
        Some(pfn)
    }

    /// `list_del()`: unlinks `pfn`, which must be on this list.
    #[inline(always)]
    pub(crate) fn remove(&mut self, map: &[Page], pfn: u32) {
        let p = &map[pfn as usize];
        let next = p.next.load(Relaxed);
        let prev = p.prev.load(Relaxed);
        if prev == NIL {
            self.head = next;
        } else {
            map[prev as usize].next.store(next, Relaxed);
        }
        if next == NIL {
            self.tail = prev;
        } else {
            map[next as usize].prev.store(prev, Relaxed);
        }
        p.next.store(NIL, Relaxed);
        p.prev.store(NIL, Relaxed);
    }
}
