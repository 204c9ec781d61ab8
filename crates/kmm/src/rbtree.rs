//! Intrusive red-black trees in simulated RAM: `lib/rbtree.c`,
//! `include/linux/rbtree.h` and `include/linux/rbtree_augmented.h`.
//!
//! As in Linux, the tree does not own its elements. An object that can sit in a
//! tree (a `vm_area_struct`, a `vmap_area`) embeds a 24-byte node somewhere in
//! its own bytes, and the tree links those nodes together. Everything here lives
//! in the RAM the memory manager manages and is reached through [`PhysMem`]:
//!
//! * A node is [`RB_NODE_SIZE`] bytes at a physical address aligned to
//!   [`RB_NODE_ALIGN`]: three little-endian words, in Linux's order,
//!   `__rb_parent_color` (the parent's address with the colour in bit 0,
//!   [`RB_RED`] = 0, [`RB_BLACK`] = 1), `rb_right` and `rb_left`.
//! * Links are **physical addresses** (kmm's metadata links are physical, like
//!   the frame numbers of the page lists); 0 is `NULL`, so no node may sit at
//!   physical address 0. Objects handed out as direct-map virtual addresses
//!   (`kmalloc`, `kmem_cache_alloc`) are converted once with `__pa()` before
//!   their node is passed here.
//! * The root ([`RbRoot`]) is a plain `u64` the caller keeps wherever it likes:
//!   in a Rust structure, or in RAM through [`RbRoot::load`] / [`RbRoot::store`].
//! * [`rb_entry`] is `container_of()`: from a node's address back to the object
//!   that embeds it.
//!
//! The caller holds whatever lock protects the tree. The words are accessed as
//! relaxed atomics only because the RAM is shared memory.
//!
//! ## Inserting, the Linux way
//!
//! ```text
//! // Objects: key at offset 0, node at offset NODE (a multiple of 8).
//! let mut link = RbLink::Root;
//! let mut cur = root.node();
//! while let Some(n) = cur {
//!     let other = mem.read_u64(rb_entry(n, NODE))?;
//!     if key < other {
//!         link = RbLink::Left(n);
//!         cur = rb_left(mem, n)?;
//!     } else {
//!         link = RbLink::Right(n);
//!         cur = rb_right(mem, n)?;
//!     }
//! }
//! rb_link_node(mem, obj + NODE, link, &mut root)?;
//! rb_insert_color(mem, obj + NODE, &mut root)?;
//! ```
//!
//! or, with a closure that reads an object's key, [`rb_add`]; lookups are
//! [`rb_find`], [`rb_find_first`], [`rb_first_ge`], [`rb_first_gt`],
//! [`rb_last_le`] and [`rb_last_lt`].
//!
//! ## Augmented trees
//!
//! A tree whose nodes also store a value summarising their subtree (vmalloc's
//! `subtree_max_size`, the old VMA tree's `rb_subtree_gap`) passes an
//! [`RbAugment`] implementation (Linux's `struct rb_augment_callbacks`) to
//! [`rb_insert_augmented`] and [`rb_erase_augmented`]. [`RbCallbacks`] builds
//! one from a compute function, as Linux's `RB_DECLARE_CALLBACKS` does.
//!
//! ## Errors
//!
//! A node address outside RAM, misaligned or `NULL` is an
//! [`KmmError::InvalidAddress`]; a tree found in a state it cannot be in (a
//! node that is not its parent's child, a red root, a path longer than any red-black
//! tree in this RAM could have) is an [`KmmError::BadObject`] naming the node.
//! Erasing or replacing a node checks that it is linked into the given tree
//! before changing anything; an error met half-way through rebalancing a
//! tree that was already corrupt leaves it as it is.

use crate::error::KmmError;
use crate::ram::PhysMem;
use core::cmp::Ordering;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `RB_RED`: the colour bit of a red node.
pub const RB_RED: u64 = 0;
/// `RB_BLACK`: the colour bit of a black node.
pub const RB_BLACK: u64 = 1;
/// `sizeof(struct rb_node)`: bytes an embedded node takes.
pub const RB_NODE_SIZE: u64 = 24;
/// `__alignof__(struct rb_node)`: nodes sit at multiples of this.
pub const RB_NODE_ALIGN: u64 = 8;
/// Longest root-to-leaf path any red-black tree can have in a 64-bit address
/// space (at most `2 * log2(n + 1)` for `n` nodes of [`RB_NODE_SIZE`] bytes).
/// Walks that go further have met a corrupt tree.
pub const RB_MAX_HEIGHT: u32 = 128;

/// Word index of `__rb_parent_color` in a node.
const PC: usize = 0;

/// A child slot of a node, as an index into its three words.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum Dir {
    Right = 1,
    Left = 2,
}

impl Dir {
    #[inline(always)]
    fn flip(self) -> Dir {
        match self {
            Dir::Right => Dir::Left,
            Dir::Left => Dir::Right,
        }
    }
}

#[inline(always)]
fn corrupt(addr: u64, why: &'static str) -> KmmError {
    KmmError::BadObject { addr, why }
}

#[inline(always)]
fn nonzero(at: u64) -> Option<u64> {
    (at != 0).then_some(at)
}

/// A node's three words in RAM, checked once.
#[derive(Clone, Copy)]
struct N<'m> {
    at: u64,
    w: &'m [AtomicU64; 3],
}

impl<'m> N<'m> {
    #[inline(always)]
    fn get(mem: &'m PhysMem, at: u64) -> Result<Self, KmmError> {
        if at == 0 {
            return Err(KmmError::InvalidAddress {
                addr: 0,
                what: "rb_node (NULL)",
            });
        }
        let w = mem.ram_slice::<AtomicU64>(at, 3)?.try_into().map_err(|_| {
            KmmError::InvalidAddress {
                addr: at,
                what: "rb_node",
            }
        })?;
        Ok(N { at, w })
    }

    #[inline(always)]
    fn pc(self) -> u64 {
        self.w[PC].load(Relaxed)
    }

    #[inline(always)]
    fn parent(self) -> u64 {
        self.pc() & !3
    }

    #[inline(always)]
    fn is_black(self) -> bool {
        self.pc() & 1 == RB_BLACK
    }

    #[inline(always)]
    fn child(self, d: Dir) -> u64 {
        self.w[d as usize].load(Relaxed)
    }

    #[inline(always)]
    fn set_child(self, d: Dir, v: u64) {
        self.w[d as usize].store(v, Relaxed)
    }

    #[inline(always)]
    fn set_pc(self, pc: u64) {
        self.w[PC].store(pc, Relaxed)
    }

    #[inline(always)]
    fn set_parent_color(self, parent: u64, color: u64) {
        self.set_pc(parent | color)
    }

    #[inline(always)]
    fn set_parent(self, parent: u64) {
        self.set_pc(parent | (self.pc() & 1))
    }

    /// Which child of `self` the node at `child` is.
    #[inline(always)]
    fn side_of(self, child: u64) -> Result<Dir, KmmError> {
        if self.child(Dir::Left) == child {
            Ok(Dir::Left)
        } else if self.child(Dir::Right) == child {
            Ok(Dir::Right)
        } else {
            Err(corrupt(child, "rb_node is not a child of its parent"))
        }
    }
}

// ---------------------------------------------------------------------------
// Roots and links
// ---------------------------------------------------------------------------

/// `struct rb_root`: the address of the root node, 0 for an empty tree.
///
/// It is a plain value: keep it in a Rust structure, or in RAM with
/// [`RbRoot::load`] and [`RbRoot::store`] around each change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RbRoot {
    /// `rb_root.rb_node`: the root node's address, 0 for none.
    pub rb_node: u64,
}

impl RbRoot {
    /// `RB_ROOT`: an empty tree.
    pub const EMPTY: RbRoot = RbRoot { rb_node: 0 };

    /// `RB_ROOT`: an empty tree.
    pub const fn new() -> Self {
        Self::EMPTY
    }

    /// The root node, if any.
    #[inline(always)]
    pub fn node(&self) -> Option<u64> {
        nonzero(self.rb_node)
    }

    /// `RB_EMPTY_ROOT()`.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.rb_node == 0
    }

    /// Reads a root stored as one `u64` at physical address `at` (an `rb_root`
    /// embedded in a structure in RAM, such as `mm->mm_rb`).
    pub fn load(mem: &PhysMem, at: u64) -> Result<Self, KmmError> {
        Ok(RbRoot {
            rb_node: mem.read_u64(at)?,
        })
    }

    /// Writes the root back as one `u64` at physical address `at`.
    pub fn store(&self, mem: &PhysMem, at: u64) -> Result<(), KmmError> {
        mem.write_u64(at, self.rb_node)
    }
}

/// `struct rb_root_cached`: a root that also remembers the leftmost node, so
/// that [`rb_first_cached`] costs nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RbRootCached {
    /// `rb_root`: the tree.
    pub rb_root: RbRoot,
    /// `rb_leftmost`: the first node in order, 0 for an empty tree.
    pub rb_leftmost: u64,
}

impl RbRootCached {
    /// `RB_ROOT_CACHED`: an empty tree.
    pub const EMPTY: RbRootCached = RbRootCached {
        rb_root: RbRoot::EMPTY,
        rb_leftmost: 0,
    };

    /// `RB_ROOT_CACHED`: an empty tree.
    pub const fn new() -> Self {
        Self::EMPTY
    }
}

/// Where a new node goes: Linux's `struct rb_node **rb_link` (the slot the
/// caller's walk down the tree ended on) together with its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RbLink {
    /// `&root->rb_node`: the tree is empty.
    Root,
    /// `&parent->rb_left` of the node at this address.
    Left(u64),
    /// `&parent->rb_right` of the node at this address.
    Right(u64),
}

/// `rb_entry()` / `container_of()`: the address of the object that embeds the
/// node at `node` at byte `offset` of itself.
#[inline(always)]
pub const fn rb_entry(node: u64, offset: u64) -> u64 {
    node.wrapping_sub(offset)
}

/// `rb_entry_safe()`: [`rb_entry`] of a node that may be `NULL`.
#[inline(always)]
pub fn rb_entry_safe(node: Option<u64>, offset: u64) -> Option<u64> {
    node.map(|n| rb_entry(n, offset))
}

// ---------------------------------------------------------------------------
// Node accessors
// ---------------------------------------------------------------------------

/// `rb_parent()`: the node's parent, `None` at the root.
#[inline]
pub fn rb_parent(mem: &PhysMem, node: u64) -> Result<Option<u64>, KmmError> {
    Ok(nonzero(N::get(mem, node)?.parent()))
}

/// `node->rb_left`.
#[inline]
pub fn rb_left(mem: &PhysMem, node: u64) -> Result<Option<u64>, KmmError> {
    Ok(nonzero(N::get(mem, node)?.child(Dir::Left)))
}

/// `node->rb_right`.
#[inline]
pub fn rb_right(mem: &PhysMem, node: u64) -> Result<Option<u64>, KmmError> {
    Ok(nonzero(N::get(mem, node)?.child(Dir::Right)))
}

/// `rb_color()`: [`RB_RED`] or [`RB_BLACK`].
#[inline]
pub fn rb_color(mem: &PhysMem, node: u64) -> Result<u64, KmmError> {
    Ok(N::get(mem, node)?.pc() & 1)
}

/// `rb_is_red()`.
#[inline]
pub fn rb_is_red(mem: &PhysMem, node: u64) -> Result<bool, KmmError> {
    Ok(rb_color(mem, node)? == RB_RED)
}

/// `rb_is_black()`.
#[inline]
pub fn rb_is_black(mem: &PhysMem, node: u64) -> Result<bool, KmmError> {
    Ok(rb_color(mem, node)? == RB_BLACK)
}

/// `RB_CLEAR_NODE()`: marks a node as in no tree (its parent is itself).
pub fn rb_clear_node(mem: &PhysMem, node: u64) -> Result<(), KmmError> {
    N::get(mem, node)?.set_pc(node);
    Ok(())
}

/// `RB_EMPTY_NODE()`: whether the node was marked by [`rb_clear_node`].
pub fn rb_empty_node(mem: &PhysMem, node: u64) -> Result<bool, KmmError> {
    Ok(N::get(mem, node)?.pc() == node)
}

// ---------------------------------------------------------------------------
// Augmentation
// ---------------------------------------------------------------------------

/// `struct rb_augment_callbacks`: keeps a per-node summary of each subtree
/// up to date while the tree changes shape.
pub trait RbAugment {
    /// `propagate(start, stop)`: recompute the value of `node` and of its
    /// ancestors, stopping below `stop` (0: go up to the root) or as soon as a
    /// value does not change.
    fn propagate(&self, mem: &PhysMem, node: u64, stop: u64) -> Result<(), KmmError>;
    /// `copy(old, new)`: `new` takes `old`'s place in the tree; give it `old`'s value.
    fn copy(&self, mem: &PhysMem, old: u64, new: u64) -> Result<(), KmmError>;
    /// `rotate(old, new)`: `new` became the parent of `old` and took its place;
    /// `new` gets `old`'s value and `old` is recomputed.
    fn rotate(&self, mem: &PhysMem, old: u64, new: u64) -> Result<(), KmmError>;
}

/// `dummy_callbacks`: the plain tree.
struct NoAugment;

impl RbAugment for NoAugment {
    #[inline(always)]
    fn propagate(&self, _: &PhysMem, _: u64, _: u64) -> Result<(), KmmError> {
        Ok(())
    }
    #[inline(always)]
    fn copy(&self, _: &PhysMem, _: u64, _: u64) -> Result<(), KmmError> {
        Ok(())
    }
    #[inline(always)]
    fn rotate(&self, _: &PhysMem, _: u64, _: u64) -> Result<(), KmmError> {
        Ok(())
    }
}

/// What `RB_DECLARE_CALLBACKS()` needs to know about an augmented value:
/// where it is stored and how it is computed. Wrap an implementation in
/// [`RbCallbacks`] to get an [`RbAugment`].
pub trait RbAugmentCompute {
    /// The augmented value (`RBAUGMENTED`'s type).
    type Value: Copy + PartialEq;
    /// The value stored in the object that embeds `node`.
    fn get(&self, mem: &PhysMem, node: u64) -> Result<Self::Value, KmmError>;
    /// Stores the value in the object that embeds `node`.
    fn set(&self, mem: &PhysMem, node: u64, v: Self::Value) -> Result<(), KmmError>;
    /// `RBCOMPUTE`: the value `node` should hold, from its own object and the
    /// values stored in its children (`left`, `right`).
    fn compute(
        &self,
        mem: &PhysMem,
        node: u64,
        left: Option<u64>,
        right: Option<u64>,
    ) -> Result<Self::Value, KmmError>;
}

/// `RB_DECLARE_CALLBACKS()`: the propagate / copy / rotate callbacks of an
/// augmented tree, built from an [`RbAugmentCompute`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RbCallbacks<C>(pub C);

impl<C: RbAugmentCompute> RbCallbacks<C> {
    #[inline(always)]
    fn recompute(&self, mem: &PhysMem, n: N<'_>) -> Result<C::Value, KmmError> {
        self.0.compute(
            mem,
            n.at,
            nonzero(n.child(Dir::Left)),
            nonzero(n.child(Dir::Right)),
        )
    }
}

impl<C: RbAugmentCompute> RbAugment for RbCallbacks<C> {
    fn propagate(&self, mem: &PhysMem, node: u64, stop: u64) -> Result<(), KmmError> {
        let mut at = node;
        for _ in 0..=RB_MAX_HEIGHT {
            if at == stop || at == 0 {
                return Ok(());
            }
            let n = N::get(mem, at)?;
            let v = self.recompute(mem, n)?;
            if self.0.get(mem, at)? == v {
                return Ok(());
            }
            self.0.set(mem, at, v)?;
            at = n.parent();
        }
        Err(corrupt(node, "rbtree: propagate went past the root"))
    }

    #[inline]
    fn copy(&self, mem: &PhysMem, old: u64, new: u64) -> Result<(), KmmError> {
        self.0.set(mem, new, self.0.get(mem, old)?)
    }

    #[inline]
    fn rotate(&self, mem: &PhysMem, old: u64, new: u64) -> Result<(), KmmError> {
        self.0.set(mem, new, self.0.get(mem, old)?)?;
        let o = N::get(mem, old)?;
        let v = self.recompute(mem, o)?;
        self.0.set(mem, old, v)
    }
}

// ---------------------------------------------------------------------------
// Linking and rebalancing
// ---------------------------------------------------------------------------

/// Points the slot that held `old` (in `parent`, or the root) at `new`.
#[inline(always)]
fn change_child(
    mem: &PhysMem,
    old: u64,
    new: u64,
    parent: u64,
    root: &mut RbRoot,
) -> Result<(), KmmError> {
    if parent == 0 {
        if root.rb_node != old {
            return Err(corrupt(old, "rb_node has no parent but is not the root"));
        }
        root.rb_node = new;
    } else {
        let p = N::get(mem, parent)?;
        let d = p.side_of(old)?;
        p.set_child(d, new);
    }
    Ok(())
}

/// Checks that `n` is linked into `root`: its parent (or the root) points at it.
#[inline(always)]
fn check_linked(mem: &PhysMem, n: N<'_>, root: &RbRoot) -> Result<(), KmmError> {
    let parent = n.parent();
    if parent == n.at {
        return Err(corrupt(n.at, "rb_node is not in a tree (RB_EMPTY_NODE)"));
    }
    if parent == 0 {
        if root.rb_node != n.at {
            return Err(corrupt(n.at, "rb_node has no parent but is not the root"));
        }
        return Ok(());
    }
    N::get(mem, parent)?.side_of(n.at).map(|_| ())
}

/// `__rb_rotate_set_parents()`: `new` takes `old`'s place (parent, colour and
/// slot) and becomes `old`'s parent; `old` gets `color`.
#[inline(always)]
fn rotate_set_parents(
    mem: &PhysMem,
    old: N<'_>,
    new: N<'_>,
    root: &mut RbRoot,
    color: u64,
) -> Result<(), KmmError> {
    let pc = old.pc();
    new.set_pc(pc);
    old.set_parent_color(new.at, color);
    change_child(mem, old.at, new.at, pc & !3, root)
}

/// `rb_link_node()`: makes `node` a red leaf in the slot `link` (found by the
/// caller's walk down the tree); [`rb_insert_color`] must follow.
///
/// The slot must be empty. The node's old contents do not matter.
pub fn rb_link_node(
    mem: &PhysMem,
    node: u64,
    link: RbLink,
    root: &mut RbRoot,
) -> Result<(), KmmError> {
    let n = N::get(mem, node)?;
    let parent = match link {
        RbLink::Root => {
            if root.rb_node != 0 {
                return Err(corrupt(node, "rb_link_node: the tree is not empty"));
            }
            0
        }
        RbLink::Left(p) | RbLink::Right(p) => {
            let d = if matches!(link, RbLink::Left(_)) {
                Dir::Left
            } else {
                Dir::Right
            };
            let pn = N::get(mem, p)?;
            if p == node || pn.child(d) != 0 {
                return Err(corrupt(p, "rb_link_node: the slot is taken"));
            }
            pn.set_child(d, node);
            p
        }
    };
    n.set_parent_color(parent, RB_RED);
    n.set_child(Dir::Left, 0);
    n.set_child(Dir::Right, 0);
    if parent == 0 {
        root.rb_node = node;
    }
    Ok(())
}

/// `__rb_insert()`: restores the red-black rules after `node` was linked as a
/// red leaf.
fn insert_fixup<A: RbAugment + ?Sized>(
    mem: &PhysMem,
    node: u64,
    root: &mut RbRoot,
    aug: &A,
) -> Result<(), KmmError> {
    let mut n = N::get(mem, node)?;
    if n.pc() & 1 != RB_RED {
        return Err(corrupt(
            node,
            "rb_insert_color: node was not linked by rb_link_node",
        ));
    }
    check_linked(mem, n, root)?;
    for _ in 0..RB_MAX_HEIGHT {
        let parent_at = n.parent();
        if parent_at == 0 {
            // `n` is the root, which is always black.
            n.set_parent_color(0, RB_BLACK);
            return Ok(());
        }
        let mut parent = N::get(mem, parent_at)?;
        if parent.is_black() {
            return Ok(());
        }
        let g_at = parent.parent();
        if g_at == 0 {
            return Err(corrupt(parent_at, "rbtree: red root"));
        }
        let g = N::get(mem, g_at)?;
        let pd = g.side_of(parent_at)?;
        let od = pd.flip();
        let uncle_at = g.child(od);
        if uncle_at != 0 {
            let uncle = N::get(mem, uncle_at)?;
            if !uncle.is_black() {
                // Red uncle: push the grandparent's black down one level and
                // carry on from the grandparent, now red.
                uncle.set_parent_color(g_at, RB_BLACK);
                parent.set_parent_color(g_at, RB_BLACK);
                g.set_parent_color(g.parent(), RB_RED);
                n = g;
                continue;
            }
        }
        if parent.child(od) == n.at {
            // `n` is an inner grandchild: turn it into an outer one by
            // rotating it above its parent.
            let t = n.child(pd);
            parent.set_child(od, t);
            n.set_child(pd, parent_at);
            if t != 0 {
                N::get(mem, t)?.set_parent_color(parent_at, RB_BLACK);
            }
            parent.set_parent_color(n.at, RB_RED);
            aug.rotate(mem, parent_at, n.at)?;
            parent = n;
        }
        // Outer grandchild: rotate the parent above the grandparent and swap
        // their colours.
        let t = parent.child(od);
        g.set_child(pd, t);
        parent.set_child(od, g_at);
        if t != 0 {
            N::get(mem, t)?.set_parent_color(g_at, RB_BLACK);
        }
        rotate_set_parents(mem, g, parent, root, RB_RED)?;
        aug.rotate(mem, g_at, parent.at)?;
        return Ok(());
    }
    Err(corrupt(node, "rbtree deeper than RB_MAX_HEIGHT"))
}

/// `__rb_erase_augmented()`: unlinks `node` and returns the node under which
/// a black is now missing (0 if none).
fn erase_unlink<A: RbAugment + ?Sized>(
    mem: &PhysMem,
    node: u64,
    root: &mut RbRoot,
    aug: &A,
) -> Result<u64, KmmError> {
    let n = N::get(mem, node)?;
    check_linked(mem, n, root)?;
    let pc = n.pc();
    let parent = pc & !3;
    let left = n.child(Dir::Left);
    let right = n.child(Dir::Right);
    let rebalance;
    let from;
    if left == 0 || right == 0 {
        // At most one child: it takes the node's place. A lone child is red
        // and the node black, so colouring the child black is enough; a
        // black leaf leaves its parent one black short.
        let child = left | right;
        if child != 0 {
            N::get(mem, child)?.set_pc(pc);
            rebalance = 0;
        } else {
            rebalance = if pc & 1 == RB_BLACK { parent } else { 0 };
        }
        change_child(mem, node, child, parent, root)?;
        from = parent;
    } else {
        // Two children: the successor (leftmost of the right subtree) takes
        // the node's place and colour.
        let r = N::get(mem, right)?;
        let mut s = r;
        let mut s_parent = r;
        let mut first = r.child(Dir::Left);
        let mut steps = 0;
        while first != 0 {
            steps += 1;
            if steps > RB_MAX_HEIGHT {
                return Err(corrupt(node, "rbtree deeper than RB_MAX_HEIGHT"));
            }
            s_parent = s;
            s = N::get(mem, first)?;
            first = s.child(Dir::Left);
        }
        let child2 = s.child(Dir::Right);
        let l = N::get(mem, left)?;
        if s.at != right {
            s_parent.set_child(Dir::Left, child2);
            s.set_child(Dir::Right, right);
            r.set_parent(s.at);
            aug.copy(mem, node, s.at)?;
            aug.propagate(mem, s_parent.at, s.at)?;
        } else {
            aug.copy(mem, node, s.at)?;
        }
        // `s` stays where it is when it is the right child; otherwise its
        // right child moves up into its old slot.
        let hole_parent = if s.at == right { s.at } else { s_parent.at };
        s.set_child(Dir::Left, left);
        l.set_parent(s.at);
        change_child(mem, node, s.at, parent, root)?;
        let s_black = s.is_black();
        if child2 != 0 {
            N::get(mem, child2)?.set_parent_color(hole_parent, RB_BLACK);
            rebalance = 0;
        } else {
            rebalance = if s_black { hole_parent } else { 0 };
        }
        s.set_pc(pc);
        from = s.at;
    }
    aug.propagate(mem, from, 0)?;
    Ok(rebalance)
}

#[cold]
fn missing_black(at: u64) -> KmmError {
    corrupt(
        at,
        "rbtree: black heights differ (no sibling to rebalance with)",
    )
}

/// `____rb_erase_color()`: every path through `parent`'s child on one side
/// (`NULL` at first) is one black short; recolour and rotate until they are not.
fn erase_fixup<A: RbAugment + ?Sized>(
    mem: &PhysMem,
    parent: u64,
    root: &mut RbRoot,
    aug: &A,
) -> Result<(), KmmError> {
    let mut node = 0u64;
    let mut p = N::get(mem, parent)?;
    for _ in 0..RB_MAX_HEIGHT {
        // The short side. On the first round `node` is NULL, and the other
        // side cannot be (it holds at least one black).
        let d = if p.child(Dir::Right) != node {
            Dir::Left
        } else {
            Dir::Right
        };
        let o = d.flip();
        let mut sib = N::get(mem, p.child(o)).map_err(|_| missing_black(p.at))?;
        if !sib.is_black() {
            // Red sibling: rotate it above the parent, so that the short
            // side's sibling is black (one of the red sibling's children).
            let t = sib.child(d);
            let tn = N::get(mem, t).map_err(|_| missing_black(sib.at))?;
            p.set_child(o, t);
            sib.set_child(d, p.at);
            tn.set_parent_color(p.at, RB_BLACK);
            rotate_set_parents(mem, p, sib, root, RB_RED)?;
            aug.rotate(mem, p.at, sib.at)?;
            sib = tn;
        }
        let mut far = sib.child(o);
        if far == 0 || N::get(mem, far)?.is_black() {
            let near = sib.child(d);
            if near == 0 || N::get(mem, near)?.is_black() {
                // Both of the sibling's children are black: make the sibling
                // red, so that the whole of `p` is one black short, and fix that.
                sib.set_parent_color(p.at, RB_RED);
                if !p.is_black() {
                    p.set_parent_color(p.parent(), RB_BLACK);
                    return Ok(());
                }
                node = p.at;
                let up = p.parent();
                if up == 0 {
                    return Ok(());
                }
                p = N::get(mem, up)?;
                continue;
            }
            // Near child red, far child black: rotate the near child above
            // the sibling so that the far child is red.
            let nn = N::get(mem, near)?;
            let t = nn.child(o);
            sib.set_child(d, t);
            nn.set_child(o, sib.at);
            p.set_child(o, near);
            if t != 0 {
                N::get(mem, t)?.set_parent_color(sib.at, RB_BLACK);
            }
            aug.rotate(mem, sib.at, near)?;
            far = sib.at;
            sib = nn;
        }
        // Far child red: rotate the sibling above the parent; the parent's
        // colour goes to the sibling, the parent and the far child turn black.
        let t = sib.child(d);
        p.set_child(o, t);
        sib.set_child(d, p.at);
        N::get(mem, far)?.set_parent_color(sib.at, RB_BLACK);
        if t != 0 {
            N::get(mem, t)?.set_parent(p.at);
        }
        rotate_set_parents(mem, p, sib, root, RB_BLACK)?;
        aug.rotate(mem, p.at, sib.at)?;
        return Ok(());
    }
    Err(corrupt(parent, "rbtree deeper than RB_MAX_HEIGHT"))
}

/// `rb_insert_color()`: rebalances the tree after [`rb_link_node`].
pub fn rb_insert_color(mem: &PhysMem, node: u64, root: &mut RbRoot) -> Result<(), KmmError> {
    insert_fixup(mem, node, root, &NoAugment)
}

/// `rb_erase()`: removes `node` from the tree. The node's own words are left
/// as they were (use [`rb_clear_node`] to mark it as in no tree).
pub fn rb_erase(mem: &PhysMem, node: u64, root: &mut RbRoot) -> Result<(), KmmError> {
    let rebalance = erase_unlink(mem, node, root, &NoAugment)?;
    if rebalance != 0 {
        erase_fixup(mem, rebalance, root, &NoAugment)?;
    }
    Ok(())
}

/// `rb_insert_augmented()`: [`rb_insert_color`] for an augmented tree.
///
/// As in Linux, the values along the path to the new node must already
/// include it: either the caller updated them on its walk down, or it set the
/// new node's value to its childless value and called
/// [`RbAugment::propagate`] from the parent ([`rb_add_augmented`] does that).
pub fn rb_insert_augmented<A: RbAugment + ?Sized>(
    mem: &PhysMem,
    node: u64,
    root: &mut RbRoot,
    aug: &A,
) -> Result<(), KmmError> {
    insert_fixup(mem, node, root, aug)
}

/// `rb_erase_augmented()`: [`rb_erase`] for an augmented tree; every value
/// is correct afterwards.
pub fn rb_erase_augmented<A: RbAugment + ?Sized>(
    mem: &PhysMem,
    node: u64,
    root: &mut RbRoot,
    aug: &A,
) -> Result<(), KmmError> {
    let rebalance = erase_unlink(mem, node, root, aug)?;
    if rebalance != 0 {
        erase_fixup(mem, rebalance, root, aug)?;
    }
    Ok(())
}

/// `rb_replace_node()`: puts `new` (not in any tree) in `victim`'s place
/// without rebalancing; the caller keeps the order right (same key). An
/// augmented value is not copied.
pub fn rb_replace_node(
    mem: &PhysMem,
    victim: u64,
    new: u64,
    root: &mut RbRoot,
) -> Result<(), KmmError> {
    let v = N::get(mem, victim)?;
    let nn = N::get(mem, new)?;
    check_linked(mem, v, root)?;
    if victim == new {
        return Ok(());
    }
    let pc = v.pc();
    let left = v.child(Dir::Left);
    let right = v.child(Dir::Right);
    if left != 0 {
        N::get(mem, left)?.set_parent(new);
    }
    if right != 0 {
        N::get(mem, right)?.set_parent(new);
    }
    change_child(mem, victim, new, pc & !3, root)?;
    nn.set_pc(pc);
    nn.set_child(Dir::Left, left);
    nn.set_child(Dir::Right, right);
    Ok(())
}

// ---------------------------------------------------------------------------
// Walking
// ---------------------------------------------------------------------------

/// Follows `d` links from `at` as far as they go.
#[inline(always)]
fn extreme(mem: &PhysMem, mut at: u64, d: Dir) -> Result<u64, KmmError> {
    for _ in 0..=RB_MAX_HEIGHT {
        let next = N::get(mem, at)?.child(d);
        if next == 0 {
            return Ok(at);
        }
        at = next;
    }
    Err(corrupt(at, "rbtree deeper than RB_MAX_HEIGHT"))
}

/// The neighbour of `node` on side `d` in order (next for `Right`).
#[inline(always)]
fn step(mem: &PhysMem, node: u64, d: Dir) -> Result<Option<u64>, KmmError> {
    let mut n = N::get(mem, node)?;
    if n.pc() == node {
        return Ok(None);
    }
    let down = n.child(d);
    if down != 0 {
        return extreme(mem, down, d.flip()).map(Some);
    }
    // Go up while we are a `d` child; the first parent reached from its
    // other side is the answer.
    for _ in 0..=RB_MAX_HEIGHT {
        let up = n.parent();
        if up == 0 {
            return Ok(None);
        }
        let p = N::get(mem, up)?;
        if p.child(d) != n.at {
            return Ok(Some(up));
        }
        n = p;
    }
    Err(corrupt(node, "rbtree deeper than RB_MAX_HEIGHT"))
}

/// `rb_first()`: the first node in order.
pub fn rb_first(mem: &PhysMem, root: &RbRoot) -> Result<Option<u64>, KmmError> {
    match root.rb_node {
        0 => Ok(None),
        r => extreme(mem, r, Dir::Left).map(Some),
    }
}

/// `rb_last()`: the last node in order.
pub fn rb_last(mem: &PhysMem, root: &RbRoot) -> Result<Option<u64>, KmmError> {
    match root.rb_node {
        0 => Ok(None),
        r => extreme(mem, r, Dir::Right).map(Some),
    }
}

/// `rb_next()`: the node after `node` in order (`None` after the last, or for
/// a node marked by [`rb_clear_node`]).
pub fn rb_next(mem: &PhysMem, node: u64) -> Result<Option<u64>, KmmError> {
    step(mem, node, Dir::Right)
}

/// `rb_prev()`: the node before `node` in order.
pub fn rb_prev(mem: &PhysMem, node: u64) -> Result<Option<u64>, KmmError> {
    step(mem, node, Dir::Left)
}

/// The first node of the subtree at `at` in post-order.
fn deepest_first(mem: &PhysMem, mut at: u64) -> Result<u64, KmmError> {
    for _ in 0..=RB_MAX_HEIGHT {
        let n = N::get(mem, at)?;
        let next = match n.child(Dir::Left) {
            0 => n.child(Dir::Right),
            l => l,
        };
        if next == 0 {
            return Ok(at);
        }
        at = next;
    }
    Err(corrupt(at, "rbtree deeper than RB_MAX_HEIGHT"))
}

/// `rb_first_postorder()`: the first node of a post-order walk (children
/// before their parent), as used to free every node of a tree.
pub fn rb_first_postorder(mem: &PhysMem, root: &RbRoot) -> Result<Option<u64>, KmmError> {
    match root.rb_node {
        0 => Ok(None),
        r => deepest_first(mem, r).map(Some),
    }
}

/// `rb_next_postorder()`: the node after `node` in post-order. It reads only
/// `node`'s parent link and nodes not yet visited, so `node` may be freed
/// once this returns.
pub fn rb_next_postorder(mem: &PhysMem, node: u64) -> Result<Option<u64>, KmmError> {
    let up = N::get(mem, node)?.parent();
    if up == 0 {
        return Ok(None);
    }
    let p = N::get(mem, up)?;
    let right = p.child(Dir::Right);
    if p.child(Dir::Left) == node && right != 0 {
        deepest_first(mem, right).map(Some)
    } else {
        Ok(Some(up))
    }
}

// ---------------------------------------------------------------------------
// Cached roots
// ---------------------------------------------------------------------------

/// `rb_first_cached()`.
#[inline]
pub fn rb_first_cached(root: &RbRootCached) -> Option<u64> {
    nonzero(root.rb_leftmost)
}

/// `rb_insert_color_cached()`: [`rb_insert_color`], telling whether the walk
/// only went left (the node is the new leftmost).
pub fn rb_insert_color_cached(
    mem: &PhysMem,
    node: u64,
    root: &mut RbRootCached,
    leftmost: bool,
) -> Result<(), KmmError> {
    insert_fixup(mem, node, &mut root.rb_root, &NoAugment)?;
    if leftmost {
        root.rb_leftmost = node;
    }
    Ok(())
}

/// `rb_erase_cached()`: [`rb_erase`], keeping the leftmost node up to date.
pub fn rb_erase_cached(mem: &PhysMem, node: u64, root: &mut RbRootCached) -> Result<(), KmmError> {
    let next = if root.rb_leftmost == node {
        Some(rb_next(mem, node)?.unwrap_or(0))
    } else {
        None
    };
    rb_erase(mem, node, &mut root.rb_root)?;
    if let Some(n) = next {
        root.rb_leftmost = n;
    }
    Ok(())
}

/// `rb_replace_node_cached()`: [`rb_replace_node`], keeping the leftmost node.
pub fn rb_replace_node_cached(
    mem: &PhysMem,
    victim: u64,
    new: u64,
    root: &mut RbRootCached,
) -> Result<(), KmmError> {
    rb_replace_node(mem, victim, new, &mut root.rb_root)?;
    if root.rb_leftmost == victim {
        root.rb_leftmost = new;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Insert and find by key (`rb_add`, `rb_find`, ...)
// ---------------------------------------------------------------------------

/// Walks down to the slot where a node with key `k` goes after every node
/// with an equal key; also tells whether the walk only went left.
#[inline(always)]
fn slot_for<K: Ord, F>(
    mem: &PhysMem,
    root: &RbRoot,
    k: &K,
    key: &mut F,
) -> Result<(RbLink, bool), KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    let mut link = RbLink::Root;
    let mut leftmost = true;
    let mut cur = root.rb_node;
    for _ in 0..=RB_MAX_HEIGHT {
        if cur == 0 {
            return Ok((link, leftmost));
        }
        let n = N::get(mem, cur)?;
        if *k < key(cur)? {
            link = RbLink::Left(cur);
            cur = n.child(Dir::Left);
        } else {
            link = RbLink::Right(cur);
            leftmost = false;
            cur = n.child(Dir::Right);
        }
    }
    Err(corrupt(root.rb_node, "rbtree deeper than RB_MAX_HEIGHT"))
}

/// `rb_add()`: inserts `node`, ordered by `key` (which reads the key of the
/// object embedding a node; `node` included). A node whose key equals others'
/// goes after them.
pub fn rb_add<K: Ord, F>(
    mem: &PhysMem,
    node: u64,
    root: &mut RbRoot,
    mut key: F,
) -> Result<(), KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    let k = key(node)?;
    let (link, _) = slot_for(mem, root, &k, &mut key)?;
    rb_link_node(mem, node, link, root)?;
    insert_fixup(mem, node, root, &NoAugment)
}

/// `rb_add_cached()`: [`rb_add`] on a cached root; returns whether `node` is
/// the new leftmost.
pub fn rb_add_cached<K: Ord, F>(
    mem: &PhysMem,
    node: u64,
    root: &mut RbRootCached,
    mut key: F,
) -> Result<bool, KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    let k = key(node)?;
    let (link, leftmost) = slot_for(mem, &root.rb_root, &k, &mut key)?;
    rb_link_node(mem, node, link, &mut root.rb_root)?;
    rb_insert_color_cached(mem, node, root, leftmost)?;
    Ok(leftmost)
}

/// [`rb_add`] for an augmented tree (what vmalloc's `insert_vmap_area_augment`
/// does): the new node's value must already be its childless value; it is
/// propagated up and kept through the rebalancing.
pub fn rb_add_augmented<K: Ord, F, A: RbAugment + ?Sized>(
    mem: &PhysMem,
    node: u64,
    root: &mut RbRoot,
    mut key: F,
    aug: &A,
) -> Result<(), KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    let k = key(node)?;
    let (link, _) = slot_for(mem, root, &k, &mut key)?;
    rb_link_node(mem, node, link, root)?;
    if let RbLink::Left(p) | RbLink::Right(p) = link {
        aug.propagate(mem, p, 0)?;
    }
    insert_fixup(mem, node, root, aug)
}

/// `rb_find_add()`: returns a node whose key equals `node`'s if there is
/// one (and leaves the tree alone), else inserts `node` and returns `None`.
pub fn rb_find_add<K: Ord, F>(
    mem: &PhysMem,
    node: u64,
    root: &mut RbRoot,
    mut key: F,
) -> Result<Option<u64>, KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    let k = key(node)?;
    let mut link = RbLink::Root;
    let mut cur = root.rb_node;
    for _ in 0..=RB_MAX_HEIGHT {
        if cur == 0 {
            rb_link_node(mem, node, link, root)?;
            insert_fixup(mem, node, root, &NoAugment)?;
            return Ok(None);
        }
        let n = N::get(mem, cur)?;
        match k.cmp(&key(cur)?) {
            Ordering::Less => {
                link = RbLink::Left(cur);
                cur = n.child(Dir::Left);
            }
            Ordering::Greater => {
                link = RbLink::Right(cur);
                cur = n.child(Dir::Right);
            }
            Ordering::Equal => return Ok(Some(cur)),
        }
    }
    Err(corrupt(root.rb_node, "rbtree deeper than RB_MAX_HEIGHT"))
}

/// `rb_find()`: a node whose key equals `k` (any of them if several do).
pub fn rb_find<K: Ord, F>(
    mem: &PhysMem,
    k: &K,
    root: &RbRoot,
    mut key: F,
) -> Result<Option<u64>, KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    let mut cur = root.rb_node;
    for _ in 0..=RB_MAX_HEIGHT {
        if cur == 0 {
            return Ok(None);
        }
        let n = N::get(mem, cur)?;
        cur = match k.cmp(&key(cur)?) {
            Ordering::Less => n.child(Dir::Left),
            Ordering::Greater => n.child(Dir::Right),
            Ordering::Equal => return Ok(Some(cur)),
        };
    }
    Err(corrupt(root.rb_node, "rbtree deeper than RB_MAX_HEIGHT"))
}

/// The first (`towards == Left`) or last node in order whose key stands in
/// the wanted relation to `k`.
#[inline(always)]
fn bound<K: Ord, F>(
    mem: &PhysMem,
    k: &K,
    root: &RbRoot,
    key: &mut F,
    towards: Dir,
    strict: bool,
) -> Result<Option<u64>, KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    // For "first with key >= k" a node qualifies if its key is above k (or
    // equal when not strict); every later node then qualifies too, so the
    // answer is this node or one to its left. Mirrored for "last".
    let beyond = if towards == Dir::Left {
        Ordering::Greater
    } else {
        Ordering::Less
    };
    let mut best = 0;
    let mut cur = root.rb_node;
    for _ in 0..=RB_MAX_HEIGHT {
        if cur == 0 {
            return Ok(nonzero(best));
        }
        let n = N::get(mem, cur)?;
        let ord = key(cur)?.cmp(k);
        if ord == beyond || (!strict && ord == Ordering::Equal) {
            best = cur;
            cur = n.child(towards);
        } else {
            cur = n.child(towards.flip());
        }
    }
    Err(corrupt(root.rb_node, "rbtree deeper than RB_MAX_HEIGHT"))
}

/// `rb_find_first()`: the first node in order whose key equals `k`.
pub fn rb_find_first<K: Ord, F>(
    mem: &PhysMem,
    k: &K,
    root: &RbRoot,
    mut key: F,
) -> Result<Option<u64>, KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    match bound(mem, k, root, &mut key, Dir::Left, false)? {
        Some(n) if key(n)? == *k => Ok(Some(n)),
        _ => Ok(None),
    }
}

/// The first node in order whose key is `>= k` (C++'s `lower_bound`; what
/// `find_vma()` does with `vm_end > addr` is [`rb_first_gt`]).
pub fn rb_first_ge<K: Ord, F>(
    mem: &PhysMem,
    k: &K,
    root: &RbRoot,
    mut key: F,
) -> Result<Option<u64>, KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    bound(mem, k, root, &mut key, Dir::Left, false)
}

/// The first node in order whose key is `> k` (`find_vma()`: the first area
/// whose `vm_end` is above the address).
pub fn rb_first_gt<K: Ord, F>(
    mem: &PhysMem,
    k: &K,
    root: &RbRoot,
    mut key: F,
) -> Result<Option<u64>, KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    bound(mem, k, root, &mut key, Dir::Left, true)
}

/// The last node in order whose key is `<= k` (vmalloc's `__find_vmap_area`:
/// the last area starting at or below the address).
pub fn rb_last_le<K: Ord, F>(
    mem: &PhysMem,
    k: &K,
    root: &RbRoot,
    mut key: F,
) -> Result<Option<u64>, KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    bound(mem, k, root, &mut key, Dir::Right, false)
}

/// The last node in order whose key is `< k`.
pub fn rb_last_lt<K: Ord, F>(
    mem: &PhysMem,
    k: &K,
    root: &RbRoot,
    mut key: F,
) -> Result<Option<u64>, KmmError>
where
    F: FnMut(u64) -> Result<K, KmmError>,
{
    bound(mem, k, root, &mut key, Dir::Right, true)
}

// ---------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------

/// The shape of a tree that passed [`rb_check`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RbShape {
    /// Number of nodes.
    pub nodes: u64,
    /// Nodes on the longest root-to-leaf path (0 for an empty tree).
    pub height: u32,
    /// Black nodes on every root-to-leaf path.
    pub black_height: u32,
}

/// Checks the red-black rules and the links of a whole tree (what
/// `lib/rbtree_test.c`'s `check()` and `CONFIG_DEBUG_VM_RB`'s `browse_rb()`
/// do): the root is black and has no parent, no red node has a red child,
/// every path has the same number of black nodes, every child points back at
/// its parent. Walks the tree with its parent links, without recursion.
pub fn rb_check(mem: &PhysMem, root: &RbRoot) -> Result<RbShape, KmmError> {
    let mut shape = RbShape::default();
    if root.rb_node == 0 {
        return Ok(shape);
    }
    let r = N::get(mem, root.rb_node)?;
    if r.parent() != 0 {
        return Err(corrupt(r.at, "rbtree: the root has a parent"));
    }
    if !r.is_black() {
        return Err(corrupt(r.at, "rbtree: red root"));
    }
    let mut leaf_blacks: Option<u32> = None;
    let mut n = r;
    let mut depth = 1u32;
    let mut blacks = 1u32;
    loop {
        // Visit `n`, which is at `depth` with `blacks` black nodes from the
        // root down to it included.
        shape.nodes += 1;
        shape.height = shape.height.max(depth);
        let left = n.child(Dir::Left);
        let right = n.child(Dir::Right);
        if left != 0 && left == right {
            return Err(corrupt(n.at, "rbtree: both children are the same node"));
        }
        for c in [left, right] {
            if c == 0 {
                match leaf_blacks {
                    None => leaf_blacks = Some(blacks),
                    Some(b) if b != blacks => {
                        return Err(corrupt(n.at, "rbtree: black heights differ"));
                    }
                    Some(_) => {}
                }
                continue;
            }
            let cn = N::get(mem, c)?;
            if cn.parent() != n.at {
                return Err(corrupt(
                    c,
                    "rbtree: child does not point back at its parent",
                ));
            }
            if !n.is_black() && !cn.is_black() {
                return Err(corrupt(c, "rbtree: red node with a red parent"));
            }
        }
        // Pre-order step: down if possible, else up to the first ancestor
        // with an unvisited right subtree.
        let down = if left != 0 { left } else { right };
        if down != 0 {
            if depth >= RB_MAX_HEIGHT {
                return Err(corrupt(down, "rbtree deeper than RB_MAX_HEIGHT"));
            }
            n = N::get(mem, down)?;
            depth += 1;
            blacks += n.is_black() as u32;
            continue;
        }
        loop {
            let up = n.parent();
            if up == 0 {
                shape.black_height = leaf_blacks.unwrap_or(0);
                return Ok(shape);
            }
            let p = N::get(mem, up)?;
            let from_left = p.child(Dir::Left) == n.at;
            blacks -= n.is_black() as u32;
            depth -= 1;
            n = p;
            let pr = p.child(Dir::Right);
            if from_left && pr != 0 {
                n = N::get(mem, pr)?;
                depth += 1;
                blacks += n.is_black() as u32;
                break;
            }
        }
    }
}

/// Checks that every node of an augmented tree holds the value its
/// [`RbAugmentCompute::compute`] gives (Linux's `check_augmented()`); as each
/// value is computed from the children's, the whole tree then agrees with a
/// recomputation from scratch. Returns the first node that does not.
pub fn rb_check_augmented<C: RbAugmentCompute>(
    mem: &PhysMem,
    root: &RbRoot,
    c: &C,
) -> Result<Option<u64>, KmmError> {
    let mut cur = rb_first_postorder(mem, root)?;
    while let Some(at) = cur {
        let n = N::get(mem, at)?;
        let want = c.compute(
            mem,
            at,
            nonzero(n.child(Dir::Left)),
            nonzero(n.child(Dir::Right)),
        )?;
        if c.get(mem, at)? != want {
            return Ok(Some(at));
        }
        cur = rb_next_postorder(mem, at)?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram::HostRam;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    // A test object in RAM: key, own value, the node (not at offset 0, as
    // in `vmap_area`), the augmented subtree maximum.
    const KEY: u64 = 0;
    const OWN: u64 = 8;
    const NODE: u64 = 16;
    const MAX: u64 = NODE + RB_NODE_SIZE;
    const OBJ: u64 = MAX + 8;
    /// Nothing lives in page 0: physical address 0 is `NULL`.
    const BASE: u64 = 4096;

    /// Hands out objects in RAM, reusing freed ones.
    struct Objs {
        next: u64,
        free: Vec<u64>,
    }

    impl Objs {
        fn new() -> Self {
            Objs {
                next: BASE,
                free: Vec::new(),
            }
        }

        /// A new object's node; the node's words hold junk.
        fn alloc(&mut self, mem: &PhysMem, key: u64, own: u64) -> u64 {
            let obj = self.free.pop().unwrap_or_else(|| {
                let o = self.next;
                self.next += OBJ;
                o
            });
            mem.write_u64(obj + KEY, key).unwrap();
            mem.write_u64(obj + OWN, own).unwrap();
            mem.fill(obj + NODE, RB_NODE_SIZE as usize, 0xa5).unwrap();
            mem.write_u64(obj + MAX, own).unwrap();
            obj + NODE
        }

        fn free(&mut self, node: u64) {
            self.free.push(rb_entry(node, NODE));
        }
    }

    fn key(mem: &PhysMem) -> impl FnMut(u64) -> Result<u64, KmmError> + '_ {
        move |n| mem.read_u64(rb_entry(n, NODE) + KEY)
    }

    fn key_of(mem: &PhysMem, n: u64) -> u64 {
        mem.read_u64(rb_entry(n, NODE) + KEY).unwrap()
    }

    /// vmalloc's `subtree_max_size`: the largest own value in the subtree.
    struct SubtreeMax;

    impl RbAugmentCompute for SubtreeMax {
        type Value = u64;
        fn get(&self, mem: &PhysMem, node: u64) -> Result<u64, KmmError> {
            mem.read_u64(rb_entry(node, NODE) + MAX)
        }
        fn set(&self, mem: &PhysMem, node: u64, v: u64) -> Result<(), KmmError> {
            mem.write_u64(rb_entry(node, NODE) + MAX, v)
        }
        fn compute(
            &self,
            mem: &PhysMem,
            node: u64,
            left: Option<u64>,
            right: Option<u64>,
        ) -> Result<u64, KmmError> {
            let mut m = mem.read_u64(rb_entry(node, NODE) + OWN)?;
            for c in [left, right].into_iter().flatten() {
                m = m.max(self.get(mem, c)?);
            }
            Ok(m)
        }
    }

    const AUG: RbCallbacks<SubtreeMax> = RbCallbacks(SubtreeMax);

    /// Checks the red-black rules from the raw words (parent|colour at 0,
    /// right at 8, left at 16), independently of the code under test;
    /// returns the nodes in order and the black height.
    fn validate(mem: &PhysMem, root: &RbRoot) -> (Vec<u64>, u32) {
        fn walk(mem: &PhysMem, n: u64, parent: u64, depth: u32, out: &mut Vec<u64>) -> u32 {
            if n == 0 {
                return 0;
            }
            assert!(depth <= RB_MAX_HEIGHT, "cycle");
            let pc = mem.read_u64(n).unwrap();
            let right = mem.read_u64(n + 8).unwrap();
            let left = mem.read_u64(n + 16).unwrap();
            assert_eq!(pc & !3, parent, "parent link of {n:#x}");
            assert_eq!(pc & 2, 0, "stray bit in __rb_parent_color");
            let red = pc & 1 == RB_RED;
            if red {
                for c in [left, right] {
                    if c != 0 {
                        assert_eq!(mem.read_u64(c).unwrap() & 1, RB_BLACK, "red-red at {n:#x}");
                    }
                }
            }
            let bl = walk(mem, left, n, depth + 1, out);
            out.push(n);
            let br = walk(mem, right, n, depth + 1, out);
            assert_eq!(bl, br, "black heights under {n:#x}");
            bl + u32::from(!red)
        }
        let mut out = Vec::new();
        if root.rb_node != 0 {
            assert_eq!(
                mem.read_u64(root.rb_node).unwrap(),
                RB_BLACK,
                "root: black, no parent"
            );
        }
        let bh = walk(mem, root.rb_node, 0, 1, &mut out);
        (out, bh)
    }

    /// `max(own)` of the subtree recomputed from scratch, checking every
    /// stored value on the way.
    fn check_max(mem: &PhysMem, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let obj = rb_entry(n, NODE);
        let l = mem.read_u64(n + 16).unwrap();
        let r = mem.read_u64(n + 8).unwrap();
        let m = mem
            .read_u64(obj + OWN)
            .unwrap()
            .max(check_max(mem, l))
            .max(check_max(mem, r));
        assert_eq!(mem.read_u64(obj + MAX).unwrap(), m, "subtree max of {n:#x}");
        m
    }

    /// Everything a tree ordered like `model` must satisfy.
    fn check_tree(mem: &PhysMem, root: &RbRoot, model: &[(u64, u64)]) {
        let (inorder, bh) = validate(mem, root);
        let want: Vec<u64> = model.iter().map(|&(_, n)| n).collect();
        assert_eq!(inorder, want, "in-order walk");
        let shape = rb_check(mem, root).unwrap();
        assert_eq!(shape.nodes, model.len() as u64);
        assert_eq!(shape.black_height, bh);
        let n = model.len() as f64;
        assert!(f64::from(shape.height) <= 2.0 * (n + 1.0).log2() + 1e-9);
        // first/next and last/prev.
        let mut fwd = Vec::new();
        let mut cur = rb_first(mem, root).unwrap();
        while let Some(c) = cur {
            fwd.push(c);
            cur = rb_next(mem, c).unwrap();
        }
        assert_eq!(fwd, want);
        let mut back = Vec::new();
        let mut cur = rb_last(mem, root).unwrap();
        while let Some(c) = cur {
            back.push(c);
            cur = rb_prev(mem, c).unwrap();
        }
        back.reverse();
        assert_eq!(back, want);
        // Post-order: every node once, children before parents.
        let mut post = Vec::new();
        let mut cur = rb_first_postorder(mem, root).unwrap();
        while let Some(c) = cur {
            for ch in [rb_left(mem, c).unwrap(), rb_right(mem, c).unwrap()]
                .into_iter()
                .flatten()
            {
                assert!(post.contains(&ch), "child after parent in post-order");
            }
            post.push(c);
            cur = rb_next_postorder(mem, c).unwrap();
        }
        post.sort_unstable();
        let mut sorted = want.clone();
        sorted.sort_unstable();
        assert_eq!(post, sorted);
    }

    /// Lookups by key against the model, for key `k`.
    fn check_lookups(mem: &PhysMem, root: &RbRoot, model: &[(u64, u64)], k: u64) {
        let first_ge = model.iter().find(|e| e.0 >= k).map(|e| e.1);
        let first_gt = model.iter().find(|e| e.0 > k).map(|e| e.1);
        let last_le = model.iter().rev().find(|e| e.0 <= k).map(|e| e.1);
        let last_lt = model.iter().rev().find(|e| e.0 < k).map(|e| e.1);
        let first_eq = model.iter().find(|e| e.0 == k).map(|e| e.1);
        assert_eq!(
            rb_first_ge(mem, &k, root, key(mem)).unwrap(),
            first_ge,
            "ge {k}"
        );
        assert_eq!(
            rb_first_gt(mem, &k, root, key(mem)).unwrap(),
            first_gt,
            "gt {k}"
        );
        assert_eq!(
            rb_last_le(mem, &k, root, key(mem)).unwrap(),
            last_le,
            "le {k}"
        );
        assert_eq!(
            rb_last_lt(mem, &k, root, key(mem)).unwrap(),
            last_lt,
            "lt {k}"
        );
        assert_eq!(
            rb_find_first(mem, &k, root, key(mem)).unwrap(),
            first_eq,
            "first {k}"
        );
        match rb_find(mem, &k, root, key(mem)).unwrap() {
            Some(n) => assert!(model.contains(&(k, n)), "rb_find {k}"),
            None => assert!(first_eq.is_none(), "rb_find missed {k}"),
        }
    }

    /// The walk down of the module documentation: equal keys go right.
    fn insert_by_hand(mem: &PhysMem, node: u64, root: &mut RbRoot) {
        let k = key_of(mem, node);
        let mut link = RbLink::Root;
        let mut cur = root.node();
        while let Some(n) = cur {
            if k < key_of(mem, n) {
                link = RbLink::Left(n);
                cur = rb_left(mem, n).unwrap();
            } else {
                link = RbLink::Right(n);
                cur = rb_right(mem, n).unwrap();
            }
        }
        rb_link_node(mem, node, link, root).unwrap();
        rb_insert_color(mem, node, root).unwrap();
    }

    /// As the old VMA code did for `rb_subtree_gap`: update the values on
    /// the way down, then link and rebalance.
    fn insert_augmented_by_hand(mem: &PhysMem, node: u64, root: &mut RbRoot) {
        let k = key_of(mem, node);
        let own = mem.read_u64(rb_entry(node, NODE) + OWN).unwrap();
        let mut link = RbLink::Root;
        let mut cur = root.node();
        while let Some(n) = cur {
            let m = SubtreeMax.get(mem, n).unwrap();
            SubtreeMax.set(mem, n, m.max(own)).unwrap();
            if k < key_of(mem, n) {
                link = RbLink::Left(n);
                cur = rb_left(mem, n).unwrap();
            } else {
                link = RbLink::Right(n);
                cur = rb_right(mem, n).unwrap();
            }
        }
        rb_link_node(mem, node, link, root).unwrap();
        rb_insert_augmented(mem, node, root, &AUG).unwrap();
    }

    /// Random inserts (with duplicate keys) and erases, checked after every
    /// step against a sorted model. `augmented` keeps `subtree max` too.
    fn run_ops(ops: &[(u8, u8, u16, u16)], augmented: bool) {
        let ram = HostRam::new(64 << 10);
        let mem = ram.mem();
        let mut objs = Objs::new();
        let mut root = RbRoot::new();
        let mut model: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        for (seq, &(what, k, own, pick)) in ops.iter().enumerate() {
            let k = u64::from(k % 64);
            // Three inserts for two erases: the tree grows to tens of nodes.
            if what % 5 < 3 || model.is_empty() {
                let node = objs.alloc(mem, k, u64::from(own));
                match (augmented, pick % 2 == 0) {
                    (false, true) => rb_add(mem, node, &mut root, key(mem)).unwrap(),
                    (false, false) => insert_by_hand(mem, node, &mut root),
                    (true, true) => rb_add_augmented(mem, node, &mut root, key(mem), &AUG).unwrap(),
                    (true, false) => insert_augmented_by_hand(mem, node, &mut root),
                }
                model.insert((k, seq as u64), node);
            } else {
                let at = *model.keys().nth(usize::from(pick) % model.len()).unwrap();
                let node = model.remove(&at).unwrap();
                if augmented {
                    rb_erase_augmented(mem, node, &mut root, &AUG).unwrap();
                } else {
                    rb_erase(mem, node, &mut root).unwrap();
                }
                objs.free(node);
            }
            let flat: Vec<(u64, u64)> = model.iter().map(|(&(k, _), &n)| (k, n)).collect();
            check_tree(mem, &root, &flat);
            if augmented {
                check_max(mem, root.rb_node);
                assert_eq!(rb_check_augmented(mem, &root, &SubtreeMax).unwrap(), None);
            }
            for probe in [0, k.saturating_sub(1), k, k + 1, 64] {
                check_lookups(mem, &root, &flat, probe);
            }
        }
    }

    proptest! {
        #[test]
        fn random_insert_erase_keeps_invariants(
            ops in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u16>(), any::<u16>()), 1..400)
        ) {
            run_ops(&ops, false);
        }

        #[test]
        fn augmented_values_follow_every_change(
            ops in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u16>(), any::<u16>()), 1..400)
        ) {
            run_ops(&ops, true);
        }

        #[test]
        fn find_add_keeps_keys_unique(keys in proptest::collection::vec(0u64..100, 1..200)) {
            let ram = HostRam::new(64 << 10);
            let mem = ram.mem();
            let mut objs = Objs::new();
            let mut root = RbRoot::new();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for k in keys {
                let node = objs.alloc(mem, k, 0);
                let got = rb_find_add(mem, node, &mut root, key(mem)).unwrap();
                match model.get(&k) {
                    Some(&old) => {
                        prop_assert_eq!(got, Some(old));
                        objs.free(node);
                    }
                    None => {
                        prop_assert_eq!(got, None);
                        model.insert(k, node);
                    }
                }
                prop_assert_eq!(rb_find(mem, &k, &root, key(mem)).unwrap(), model.get(&k).copied());
            }
            let flat: Vec<(u64, u64)> = model.iter().map(|(&k, &n)| (k, n)).collect();
            check_tree(mem, &root, &flat);
        }

        #[test]
        fn cached_root_tracks_leftmost(
            ops in proptest::collection::vec((any::<bool>(), 0u64..50, any::<u16>()), 1..200)
        ) {
            let ram = HostRam::new(64 << 10);
            let mem = ram.mem();
            let mut objs = Objs::new();
            let mut root = RbRootCached::new();
            let mut model: BTreeMap<(u64, usize), u64> = BTreeMap::new();
            for (seq, (insert, k, pick)) in ops.into_iter().enumerate() {
                if insert || model.is_empty() {
                    let node = objs.alloc(mem, k, 0);
                    let leftmost = rb_add_cached(mem, node, &mut root, key(mem)).unwrap();
                    prop_assert_eq!(leftmost, model.keys().next().is_none_or(|&(first, _)| k < first));
                    model.insert((k, seq), node);
                } else {
                    let at = *model.keys().nth(usize::from(pick) % model.len()).unwrap();
                    let node = model.remove(&at).unwrap();
                    rb_erase_cached(mem, node, &mut root).unwrap();
                    objs.free(node);
                }
                prop_assert_eq!(rb_first_cached(&root), model.values().next().copied());
                prop_assert_eq!(rb_first_cached(&root), rb_first(mem, &root.rb_root).unwrap());
                let flat: Vec<(u64, u64)> = model.iter().map(|(&(k, _), &n)| (k, n)).collect();
                check_tree(mem, &root.rb_root, &flat);
            }
        }

        #[test]
        fn replace_node_takes_the_place(
            keys in proptest::collection::vec(0u64..1000, 1..100),
            picks in proptest::collection::vec(any::<u16>(), 1..50)
        ) {
            let ram = HostRam::new(64 << 10);
            let mem = ram.mem();
            let mut objs = Objs::new();
            let mut root = RbRootCached::new();
            let mut model: Vec<(u64, u64)> = Vec::new();
            for k in keys {
                let node = objs.alloc(mem, k, 0);
                rb_add_cached(mem, node, &mut root, key(mem)).unwrap();
                let at = model.partition_point(|e| e.0 <= k);
                model.insert(at, (k, node));
            }
            for p in picks {
                let i = usize::from(p) % model.len();
                let (k, victim) = model[i];
                let new = objs.alloc(mem, k, 0);
                rb_replace_node_cached(mem, victim, new, &mut root).unwrap();
                objs.free(victim);
                model[i].1 = new;
                check_tree(mem, &root.rb_root, &model);
                prop_assert_eq!(rb_first_cached(&root), Some(model[0].1));
            }
        }
    }

    #[test]
    fn empty_tree() {
        let ram = HostRam::new(4096);
        let mem = ram.mem();
        let root = RbRoot::EMPTY;
        assert!(root.is_empty());
        assert_eq!(rb_first(mem, &root).unwrap(), None);
        assert_eq!(rb_last(mem, &root).unwrap(), None);
        assert_eq!(rb_first_postorder(mem, &root).unwrap(), None);
        assert_eq!(rb_check(mem, &root).unwrap(), RbShape::default());
        assert_eq!(rb_find(mem, &1u64, &root, key(mem)).unwrap(), None);
        assert_eq!(rb_first_ge(mem, &0u64, &root, key(mem)).unwrap(), None);
        assert_eq!(rb_first_cached(&RbRootCached::new()), None);
    }

    #[test]
    fn ascending_and_descending_runs_stay_balanced() {
        let ram = HostRam::new(2 << 20);
        let mem = ram.mem();
        let mut objs = Objs::new();
        let mut root = RbRoot::new();
        let n = 20_000u64;
        let mut nodes = Vec::new();
        for i in 0..n {
            let k = if i % 2 == 0 { i } else { 2 * n - i };
            let node = objs.alloc(mem, k, k);
            rb_add_augmented(mem, node, &mut root, key(mem), &AUG).unwrap();
            nodes.push(node);
        }
        let shape = rb_check(mem, &root).unwrap();
        assert_eq!(shape.nodes, n);
        assert!(f64::from(shape.height) <= 2.0 * ((n + 1) as f64).log2());
        assert_eq!(check_max(mem, root.rb_node), 2 * n - 1);
        for (i, node) in nodes.into_iter().enumerate() {
            rb_erase_augmented(mem, node, &mut root, &AUG).unwrap();
            if i % 1000 == 0 {
                rb_check(mem, &root).unwrap();
                check_max(mem, root.rb_node);
            }
        }
        assert!(root.is_empty());
    }

    #[test]
    fn root_can_live_in_ram() {
        let ram = HostRam::new(64 << 10);
        let mem = ram.mem();
        let mut objs = Objs::new();
        let root_at = 32 << 10;
        RbRoot::EMPTY.store(mem, root_at).unwrap();
        for k in [5u64, 1, 9, 3, 7] {
            let node = objs.alloc(mem, k, 0);
            let mut root = RbRoot::load(mem, root_at).unwrap();
            rb_add(mem, node, &mut root, key(mem)).unwrap();
            root.store(mem, root_at).unwrap();
        }
        let root = RbRoot::load(mem, root_at).unwrap();
        let mut keys = Vec::new();
        let mut cur = rb_first(mem, &root).unwrap();
        while let Some(n) = cur {
            keys.push(key_of(mem, n));
            cur = rb_next(mem, n).unwrap();
        }
        assert_eq!(keys, [1, 3, 5, 7, 9]);
    }

    #[test]
    fn postorder_walk_may_free_as_it_goes() {
        let ram = HostRam::new(64 << 10);
        let mem = ram.mem();
        let mut objs = Objs::new();
        let mut root = RbRoot::new();
        for k in 0..300u64 {
            let node = objs.alloc(mem, (k * 37) % 101, 0);
            rb_add(mem, node, &mut root, key(mem)).unwrap();
        }
        let mut seen = 0;
        let mut cur = rb_first_postorder(mem, &root).unwrap();
        while let Some(n) = cur {
            cur = rb_next_postorder(mem, n).unwrap();
            // "Free" the node: scribble over it.
            mem.fill(n, RB_NODE_SIZE as usize, 0x5a).unwrap();
            seen += 1;
        }
        assert_eq!(seen, 300);
    }

    #[test]
    fn bad_input_is_an_error_and_leaves_the_tree_alone() {
        let ram = HostRam::new(64 << 10);
        let mem = ram.mem();
        let mut objs = Objs::new();
        let mut root = RbRoot::new();
        let mut nodes = Vec::new();
        for k in 0..20u64 {
            let node = objs.alloc(mem, k, 0);
            rb_add(mem, node, &mut root, key(mem)).unwrap();
            nodes.push(node);
        }
        let before = root;
        let model: Vec<(u64, u64)> = (0..20).zip(nodes.iter().copied()).collect();
        let addr = |r: Result<(), KmmError>| matches!(r, Err(KmmError::InvalidAddress { .. }));
        let bad = |r: Result<(), KmmError>| matches!(r, Err(KmmError::BadObject { .. }));
        // NULL, misaligned, outside RAM.
        assert!(addr(rb_erase(mem, 0, &mut root)));
        assert!(addr(rb_erase(mem, nodes[3] + 4, &mut root)));
        assert!(addr(rb_erase(mem, u64::MAX - 7, &mut root)));
        assert!(addr(rb_link_node(mem, 1 << 40, RbLink::Root, &mut root)));
        assert!(rb_next(mem, mem.len()).is_err());
        // A node in no tree, a taken slot, a non-empty root.
        let loose = objs.alloc(mem, 100, 0);
        rb_clear_node(mem, loose).unwrap();
        assert!(rb_empty_node(mem, loose).unwrap());
        assert_eq!(rb_next(mem, loose).unwrap(), None);
        assert!(bad(rb_erase(mem, loose, &mut root)));
        assert!(bad(rb_replace_node(mem, loose, nodes[0], &mut root)));
        assert!(bad(rb_link_node(mem, loose, RbLink::Root, &mut root)));
        let inner = root.rb_node;
        assert!(bad(rb_link_node(
            mem,
            loose,
            RbLink::Left(inner),
            &mut root
        )));
        // A node of another tree.
        let mut other = RbRoot::new();
        let stranger = objs.alloc(mem, 7, 0);
        rb_add(mem, stranger, &mut other, key(mem)).unwrap();
        let child = objs.alloc(mem, 8, 0);
        rb_add(mem, child, &mut other, key(mem)).unwrap();
        // Its root is refused; an inner node is only recognised as foreign
        // if the check walked up to the root, which erase does not do.
        assert!(bad(rb_erase(mem, stranger, &mut root)));
        assert!(bad(rb_insert_color(mem, stranger, &mut root)));
        assert_eq!(root, before);
        check_tree(mem, &root, &model);
    }

    #[test]
    fn check_finds_broken_trees() {
        let ram = HostRam::new(64 << 10);
        let mem = ram.mem();
        let mut objs = Objs::new();
        let mut root = RbRoot::new();
        let mut nodes = Vec::new();
        for k in 0..64u64 {
            let node = objs.alloc(mem, k, 0);
            rb_add(mem, node, &mut root, key(mem)).unwrap();
            nodes.push(node);
        }
        rb_check(mem, &root).unwrap();
        let broken = |mem: &PhysMem, root: &RbRoot| {
            matches!(rb_check(mem, root), Err(KmmError::BadObject { .. }))
        };
        let r = root.rb_node;
        // A red root.
        let pc = mem.read_u64(r).unwrap();
        mem.write_u64(r, pc & !1).unwrap();
        assert!(broken(mem, &root));
        mem.write_u64(r, pc).unwrap();
        // A black node turned red changes black heights or makes red-red.
        for &n in &nodes {
            if n == r || rb_is_red(mem, n).unwrap() {
                continue;
            }
            let pc = mem.read_u64(n).unwrap();
            mem.write_u64(n, pc & !1).unwrap();
            assert!(broken(mem, &root), "recoloured {n:#x}");
            mem.write_u64(n, pc).unwrap();
        }
        // A wrong parent link.
        let leaf = nodes[0];
        let pc = mem.read_u64(leaf).unwrap();
        mem.write_u64(leaf, (r & !3) | (pc & 1)).unwrap();
        assert!(broken(mem, &root) || rb_parent(mem, leaf).unwrap() == Some(r));
        mem.write_u64(leaf, pc).unwrap();
        rb_check(mem, &root).unwrap();
        // A cycle: the first node's left link points at the root. Walks
        // stop with an error instead of going round for ever.
        mem.write_u64(leaf + 16, r).unwrap();
        assert!(rb_check(mem, &root).is_err());
        assert!(rb_first(mem, &root).is_err());
        assert!(rb_find_first(mem, &0u64, &root, key(mem)).is_err());
        assert!(rb_last_lt(mem, &0u64, &root, key(mem)).is_err());
        mem.write_u64(leaf + 16, 0).unwrap();
        rb_check(mem, &root).unwrap();
        // The same on the right: the last node's right link points at the root.
        let last = nodes[63];
        mem.write_u64(last + 8, r).unwrap();
        assert!(rb_last(mem, &root).is_err());
        let extra = objs.alloc(mem, 1000, 0);
        assert!(rb_add(mem, extra, &mut root, key(mem)).is_err());
        assert!(rb_find_add(mem, extra, &mut root, key(mem)).is_err());
        assert!(rb_find(mem, &1000u64, &root, key(mem)).is_err());
        mem.write_u64(last + 8, 0).unwrap();
        rb_check(mem, &root).unwrap();
    }

    #[test]
    fn node_accessors_read_linux_layout() {
        let ram = HostRam::new(16 << 10);
        let mem = ram.mem();
        let mut objs = Objs::new();
        let mut root = RbRoot::new();
        let a = objs.alloc(mem, 2, 0);
        let b = objs.alloc(mem, 1, 0);
        let c = objs.alloc(mem, 3, 0);
        for n in [a, b, c] {
            rb_add(mem, n, &mut root, key(mem)).unwrap();
        }
        assert_eq!(root.node(), Some(a));
        assert_eq!(rb_left(mem, a).unwrap(), Some(b));
        assert_eq!(rb_right(mem, a).unwrap(), Some(c));
        assert_eq!(rb_parent(mem, b).unwrap(), Some(a));
        assert_eq!(rb_parent(mem, a).unwrap(), None);
        assert_eq!(rb_color(mem, a).unwrap(), RB_BLACK);
        assert!(rb_is_red(mem, b).unwrap() && rb_is_red(mem, c).unwrap());
        assert!(rb_is_black(mem, a).unwrap());
        assert_eq!(mem.read_u64(a).unwrap(), RB_BLACK);
        assert_eq!(mem.read_u64(a + 8).unwrap(), c);
        assert_eq!(mem.read_u64(a + 16).unwrap(), b);
        assert_eq!(mem.read_u64(b).unwrap(), a | RB_RED);
        assert_eq!(rb_entry(a, NODE) % OBJ, BASE % OBJ);
        assert_eq!(rb_entry_safe(None, NODE), None);
    }
}
