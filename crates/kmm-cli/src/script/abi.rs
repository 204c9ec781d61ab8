//! The Linux ABI values a workload names: `PROT_*`, `MAP_*`, `MREMAP_*`,
//! `MADV_*` (Linux's numbers, from [`kmm::mmap`] where it has them),
//! the error numbers and signals `expect` accepts, and strace's way of
//! printing flag words.

use kmm::mmap;
use kmm::Errno;

/// `PROT_READ`.
pub const PROT_READ: u32 = mmap::PROT_READ as u32;
/// `PROT_WRITE`.
pub const PROT_WRITE: u32 = mmap::PROT_WRITE as u32;
/// `PROT_EXEC`.
pub const PROT_EXEC: u32 = mmap::PROT_EXEC as u32;
/// `MAP_SHARED`.
pub const MAP_SHARED: u32 = mmap::MAP_SHARED as u32;
/// `MAP_PRIVATE`.
pub const MAP_PRIVATE: u32 = mmap::MAP_PRIVATE as u32;
/// `MAP_FIXED`.
pub const MAP_FIXED: u32 = mmap::MAP_FIXED as u32;
/// `MAP_ANONYMOUS`.
pub const MAP_ANONYMOUS: u32 = mmap::MAP_ANONYMOUS as u32;
/// `MAP_GROWSDOWN`.
pub const MAP_GROWSDOWN: u32 = mmap::MAP_GROWSDOWN as u32;
/// `MAP_LOCKED`.
pub const MAP_LOCKED: u32 = mmap::MAP_LOCKED as u32;
/// `MAP_NORESERVE`.
pub const MAP_NORESERVE: u32 = mmap::MAP_NORESERVE as u32;
/// `MAP_POPULATE`.
pub const MAP_POPULATE: u32 = mmap::MAP_POPULATE as u32;
/// `MAP_STACK`.
pub const MAP_STACK: u32 = mmap::MAP_STACK as u32;
/// `MAP_FIXED_NOREPLACE`.
pub const MAP_FIXED_NOREPLACE: u32 = mmap::MAP_FIXED_NOREPLACE as u32;
/// `MREMAP_MAYMOVE`.
pub const MREMAP_MAYMOVE: u32 = mmap::MREMAP_MAYMOVE as u32;
/// `MREMAP_FIXED`.
pub const MREMAP_FIXED: u32 = mmap::MREMAP_FIXED as u32;
/// `MREMAP_DONTUNMAP`.
pub const MREMAP_DONTUNMAP: u32 = mmap::MREMAP_DONTUNMAP as u32;

/// A flag word's names and bits, in the order strace prints them.
pub type Names = &'static [(&'static str, u32)];

/// `PROT_*` (`PROT_NONE` is the empty word).
pub const PROT_NAMES: Names = &[
    ("PROT_READ", PROT_READ),
    ("PROT_WRITE", PROT_WRITE),
    ("PROT_EXEC", PROT_EXEC),
];

/// `MAP_*`.
pub const MAP_NAMES: Names = &[
    ("MAP_SHARED", MAP_SHARED),
    ("MAP_PRIVATE", MAP_PRIVATE),
    ("MAP_FIXED", MAP_FIXED),
    ("MAP_ANONYMOUS", MAP_ANONYMOUS),
    ("MAP_GROWSDOWN", MAP_GROWSDOWN),
    ("MAP_LOCKED", MAP_LOCKED),
    ("MAP_NORESERVE", MAP_NORESERVE),
    ("MAP_POPULATE", MAP_POPULATE),
    ("MAP_STACK", MAP_STACK),
    ("MAP_FIXED_NOREPLACE", MAP_FIXED_NOREPLACE),
];

/// `MREMAP_*`.
pub const MREMAP_NAMES: Names = &[
    ("MREMAP_MAYMOVE", MREMAP_MAYMOVE),
    ("MREMAP_FIXED", MREMAP_FIXED),
    ("MREMAP_DONTUNMAP", MREMAP_DONTUNMAP),
];

/// `MADV_*`: advice values, not bits (`MADV_FREE` and `MADV_REMOVE`,
/// which kmm does not know, with Linux's numbers).
pub const MADV_NAMES: Names = &[
    ("MADV_NORMAL", mmap::MADV_NORMAL as u32),
    ("MADV_RANDOM", mmap::MADV_RANDOM as u32),
    ("MADV_SEQUENTIAL", mmap::MADV_SEQUENTIAL as u32),
    ("MADV_WILLNEED", mmap::MADV_WILLNEED as u32),
    ("MADV_DONTNEED", mmap::MADV_DONTNEED as u32),
    ("MADV_FREE", 8),
    ("MADV_REMOVE", 9),
    ("MADV_DONTFORK", mmap::MADV_DONTFORK as u32),
    ("MADV_DOFORK", mmap::MADV_DOFORK as u32),
];

/// Looks a name up in `table`, case-insensitively and with or without the
/// table's prefix (`private`, `MAP_PRIVATE`); `anon` is `MAP_ANONYMOUS`.
pub fn lookup(table: Names, name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let upper = if upper == "ANON" || upper == "MAP_ANON" {
        "MAP_ANONYMOUS".to_string()
    } else {
        upper
    };
    table.iter().find_map(|&(full, bits)| {
        let short = full.split_once('_').map_or(full, |(_, s)| s);
        (upper == full || upper == short).then_some(bits)
    })
}

/// The short names of a table, lower case (`private, shared, ...`), for
/// error messages.
pub fn short_names(table: Names) -> String {
    table
        .iter()
        .map(|(full, _)| {
            full.split_once('_')
                .map_or(*full, |(_, s)| s)
                .to_ascii_lowercase()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A flag word as strace prints it: `PROT_READ|PROT_WRITE`, unknown bits
/// as a trailing hex number, and `zero` when no bit is set.
pub fn format_bits(value: u32, table: Names, zero: &str) -> String {
    if value == 0 {
        return zero.to_string();
    }
    let mut parts = Vec::new();
    let mut rest = value;
    for &(name, bits) in table {
        if bits != 0 && value & bits == bits && rest & bits != 0 {
            parts.push(name.to_string());
            rest &= !bits;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    parts.join("|")
}

/// An advice value as strace prints it: its name, or the number.
pub fn format_advice(value: u32) -> String {
    MADV_NAMES
        .iter()
        .find(|(_, v)| *v == value)
        .map_or_else(|| value.to_string(), |(n, _)| n.to_string())
}

/// Every error number kmm's system calls return (`expect ENOMEM`).
pub const ERRNOS: [Errno; 15] = [
    Errno::EPERM,
    Errno::ENOENT,
    Errno::E2BIG,
    Errno::ENOEXEC,
    Errno::EBADF,
    Errno::EAGAIN,
    Errno::ENOMEM,
    Errno::EACCES,
    Errno::EFAULT,
    Errno::EBUSY,
    Errno::EEXIST,
    Errno::ENODEV,
    Errno::EINVAL,
    Errno::EFBIG,
    Errno::EOVERFLOW,
];

/// The signals that kill a process in kmm (`expect SIGSEGV`).
pub const SIGNALS: [&str; 2] = ["SIGSEGV", "SIGBUS"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_values_are_linuxs() {
        assert_eq!([PROT_READ, PROT_WRITE, PROT_EXEC], [1, 2, 4]);
        assert_eq!(
            [
                MAP_SHARED,
                MAP_PRIVATE,
                MAP_FIXED,
                MAP_ANONYMOUS,
                MAP_GROWSDOWN
            ],
            [1, 2, 0x10, 0x20, 0x100]
        );
        assert_eq!(
            [
                MAP_LOCKED,
                MAP_NORESERVE,
                MAP_POPULATE,
                MAP_STACK,
                MAP_FIXED_NOREPLACE
            ],
            [0x2000, 0x4000, 0x8000, 0x20000, 0x100000]
        );
        assert_eq!([MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP], [1, 2, 4]);
        assert_eq!(
            ["dontneed", "dontfork", "dofork"].map(|n| lookup(MADV_NAMES, n)),
            [Some(4), Some(10), Some(11)]
        );
    }

    #[test]
    fn names_are_found_with_or_without_their_prefix() {
        assert_eq!(lookup(MAP_NAMES, "private"), Some(MAP_PRIVATE));
        assert_eq!(lookup(MAP_NAMES, "MAP_PRIVATE"), Some(MAP_PRIVATE));
        assert_eq!(lookup(MAP_NAMES, "anon"), Some(MAP_ANONYMOUS));
        assert_eq!(
            lookup(MAP_NAMES, "fixed_noreplace"),
            Some(MAP_FIXED_NOREPLACE)
        );
        assert_eq!(lookup(MADV_NAMES, "dontneed"), Some(4));
        assert_eq!(lookup(PROT_NAMES, "exec"), Some(PROT_EXEC));
        assert_eq!(lookup(MAP_NAMES, "privat"), None);
    }

    #[test]
    fn flag_words_print_like_strace() {
        assert_eq!(
            format_bits(MAP_PRIVATE | MAP_ANONYMOUS, MAP_NAMES, "0"),
            "MAP_PRIVATE|MAP_ANONYMOUS"
        );
        assert_eq!(format_bits(0, PROT_NAMES, "PROT_NONE"), "PROT_NONE");
        assert_eq!(
            format_bits(PROT_READ | 0x40, PROT_NAMES, "PROT_NONE"),
            "PROT_READ|0x40"
        );
        assert_eq!(format_advice(10), "MADV_DONTFORK");
        assert_eq!(format_advice(77), "77");
    }
}
