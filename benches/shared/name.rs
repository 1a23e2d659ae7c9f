// `Name`, shared by `workload` and `peers` (which hands both engines the same names).

/// `user<n>` (what `names[n]` holds), written into a buffer on the stack.
struct Name {
    buf: [u8; 24],
    len: usize,
}

impl Name {
    fn of(n: usize) -> Name {
        let mut digits = [0u8; 20];
        let (mut n, mut d) = (n, digits.len());
        loop {
            d -= 1;
            digits[d] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut buf = [0u8; 24];
        buf[..4].copy_from_slice(b"user");
        let len = 4 + digits.len() - d;
        buf[4..len].copy_from_slice(&digits[d..]);
        Name { buf, len }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("ASCII")
    }
}

/// Panics unless `Name::of` writes what `names` holds (run when a bench starts).
fn check_names(names: &[String]) {
    for (n, name) in names.iter().enumerate() {
        assert_eq!(Name::of(n).as_str(), name);
    }
}
