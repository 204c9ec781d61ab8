//! Sizes on the command line: `64M`, `1G`, `4096`, `4K`, `64GiB`.
//!
//! Units are binary and case-insensitive, as in Linux's `memparse()` (the
//! parser behind `mem=` and `crashkernel=`): `K` = 1024, `M` = 1024², `G`,
//! `T`, `P`, `E`. An optional `B` or `iB` may follow (`4KB`, `4KiB`), and a
//! bare `B` means bytes. `KB` is 1024 bytes here, as everywhere in the kernel.

use std::fmt;
use std::str::FromStr;

/// A size in bytes, parsed from and printed as `64M`, `1G`, `4K`, `4096`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

/// Unit letters and their shifts, smallest first.
const UNITS: [(char, u32); 6] = [
    ('K', 10),
    ('M', 20),
    ('G', 30),
    ('T', 40),
    ('P', 50),
    ('E', 60),
];

/// Parses a size. The error says what is wrong with `text`, without naming
/// the option (clap adds that).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err(
            "empty size: expected a number with an optional unit, e.g. 64M, 1G, 4096".into(),
        );
    }
    if s.starts_with('-') {
        return Err(format!(
            "'{s}' is negative: a size is a whole number of bytes"
        ));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a size: expected a number with an optional unit, e.g. 64M, 1G, 4096"
        ));
    }
    let unit = unit.trim_start();
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "'{s}': fractions are not accepted; use a smaller unit (e.g. 1536M, not 1.5G)"
        ));
    }
    let shift = unit_shift(unit).ok_or_else(|| {
        format!("'{s}': unknown unit '{unit}' (use K, M, G or T, optionally followed by B or iB)")
    })?;
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is too large (more than 16 EiB)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large (more than 16 EiB)"))
}

/// The shift of a unit suffix (`""`, `B`, `K`, `KB`, `KiB`, ...), or `None`.
fn unit_shift(unit: &str) -> Option<u32> {
    let u = unit.to_ascii_uppercase();
    if u.is_empty() || u == "B" {
        return Some(0);
    }
    let mut chars = u.chars();
    let letter = chars.next()?;
    let rest = chars.as_str();
    let (_, shift) = UNITS.iter().find(|(c, _)| *c == letter)?;
    matches!(rest, "" | "B" | "IB").then_some(*shift)
}

/// Prints a byte count in the largest unit that divides it exactly:
/// `4G`, `896M`, `8K`, `1000` (bytes).
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    for &(c, shift) in UNITS.iter().rev() {
        if bytes.trailing_zeros() >= shift {
            return format!("{}{c}", bytes >> shift);
        }
    }
    bytes.to_string()
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(Size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size(" 4096 "), Ok(4096));
    }

    #[test]
    fn units_are_binary_and_case_insensitive() {
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KB"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4kib"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64GiB"), Ok(64 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("8 K"), Ok(8192));
        assert_eq!(parse_size("15E"), Ok(15 << 60));
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        let err = |s: &str| parse_size(s).unwrap_err();
        assert!(err("").contains("empty"));
        assert!(err("   ").contains("empty"));
        assert!(err("-1G").contains("negative"));
        assert!(err("G").contains("not a size"));
        assert!(err("lots").contains("not a size"));
        assert!(err("1.5G").contains("fractions"));
        assert!(err("12X").contains("unknown unit 'X'"));
        assert!(err("4KBB").contains("unknown unit"));
        assert!(err("4Ki").contains("unknown unit"));
        assert!(err("16E").contains("too large"));
        assert!(err("99999999999999999999999").contains("too large"));
        assert!(err("1G1").contains("unknown unit"));
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(format_size(4 << 30), "4G");
        assert_eq!(format_size(896 << 20), "896M");
        assert_eq!(format_size(8192), "8K");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(1 << 60), "1E");
        assert_eq!(Size(1536 << 20).to_string(), "1536M");
    }

    #[test]
    fn printing_then_parsing_gives_the_same_size() {
        for b in [1u64, 4095, 4096, 3 << 29, 64 << 30, u64::MAX] {
            assert_eq!(Size(b).to_string().parse::<Size>(), Ok(Size(b)));
        }
    }
}
