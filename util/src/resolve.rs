//! Path resolution confined to a directory (`openat2` with `RESOLVE_IN_ROOT` or
//! `RESOLVE_BENEATH`), which the kernel may refuse with EAGAIN when any rename or mount
//! anywhere on the system raced the lookup: the caller is to try again.

/// How many times a raced lookup is tried before its EAGAIN is returned.
const ATTEMPTS: usize = 64;

/// Runs `open` (an `openat2` with a confining resolve flag) again while it fails
/// with EAGAIN, at most [`ATTEMPTS`] times.
pub fn retry_raced<T, E>(mut open: impl FnMut() -> Result<T, E>) -> Result<T, E>
where
    E: Copy + Into<std::io::Error>,
{
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match open() {
            Err(e) if e.into().raw_os_error() == Some(libc::EAGAIN) => last = Some(e),
            other => return other,
        }
    }
    Err(last.expect("ATTEMPTS is not zero"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Raw(i32);

    impl From<Raw> for std::io::Error {
        fn from(r: Raw) -> std::io::Error {
            std::io::Error::from_raw_os_error(r.0)
        }
    }

    #[test]
    fn eagain_is_retried_and_other_errors_are_not() {
        let mut calls = 0;
        let r: Result<u8, Raw> = retry_raced(|| {
            calls += 1;
            if calls < 3 {
                Err(Raw(libc::EAGAIN))
            } else {
                Ok(7)
            }
        });
        assert_eq!((r, calls), (Ok(7), 3));
        let mut calls = 0;
        let r: Result<u8, Raw> = retry_raced(|| {
            calls += 1;
            Err(Raw(libc::ENOENT))
        });
        assert_eq!((r, calls), (Err(Raw(libc::ENOENT)), 1));
        let mut calls = 0;
        let r: Result<u8, Raw> = retry_raced(|| {
            calls += 1;
            Err(Raw(libc::EAGAIN))
        });
        assert_eq!((r, calls), (Err(Raw(libc::EAGAIN)), ATTEMPTS));
    }
}
