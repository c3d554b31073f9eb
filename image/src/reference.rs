//! Image references as people type them, normalized the way Docker and containerd do.

use std::fmt;

use oci_client::Reference;

use crate::error::{ImageError, Result};

/// A parsed, normalized image reference: `busybox` is `docker.io/library/busybox:latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    /// Parses a reference as a user or kubelet writes it.
    pub fn parse(input: &str) -> Result<Self> {
        let invalid = |reason: String| ImageError::InvalidReference {
            reference: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(invalid("empty reference".into()));
        }
        if input.trim() != input {
            return Err(invalid("surrounding whitespace".into()));
        }
        if is_image_id(input) {
            return Err(invalid("an image id is not a pullable reference".into()));
        }
        let inner =
            Reference::try_from(input).map_err(|e| invalid(e.to_string().to_lowercase()))?;
        if inner.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository name must be lowercase".into()));
        }
        // A reference with both a tag and a digest is pulled by digest; the tag is only
        // decoration, as containerd treats it.
        let inner = match (inner.tag(), inner.digest()) {
            (Some(_), Some(digest)) => Reference::with_digest(
                inner.registry().to_string(),
                inner.repository().to_string(),
                digest.to_string(),
            ),
            _ => inner,
        };
        Ok(ImageRef { inner })
    }

    /// The registry host, e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, when the reference names one.
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The digest, when the reference names one.
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// `registry/repository@digest` for the given manifest digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{}", self.name(), digest)
    }

    /// The underlying registry-client reference.
    pub(crate) fn client_ref(&self) -> &Reference {
        &self.inner
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// True when `s` is an image id: `sha256:` and 64 hex digits, or the bare 64 hex digits.
pub fn is_image_id(s: &str) -> bool {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// True when `s` is a well-formed `sha256:` digest.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_image_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn short_names_expand_to_docker_hub_library() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("someone/tool:v1"), "docker.io/someone/tool:v1");
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn registries_with_ports_and_digests() {
        assert_eq!(norm("127.0.0.1:5000/a/b:t"), "127.0.0.1:5000/a/b:t");
        assert_eq!(norm("localhost:5000/x"), "localhost:5000/x:latest");
        let r = ImageRef::parse(&format!("127.0.0.1:5000/name@{D}")).unwrap();
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.tag(), None);
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.with_digest(D), format!("127.0.0.1:5000/name@{D}"));
    }

    #[test]
    fn tag_and_digest_pull_by_digest() {
        let r = ImageRef::parse(&format!("quay.io/x/y:v1@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(D));
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            " busybox",
            "UPPER/case",
            "busybox@sha256:abc",
            "busybox@md5:00000000000000000000000000000000",
            "a//b",
            "busybox:",
            &D[7..],
            D,
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidReference { .. }),
                "{bad:?} gave {err}"
            );
        }
    }

    #[test]
    fn image_ids() {
        assert!(is_image_id(D));
        assert!(is_image_id(&D[7..]));
        assert!(!is_image_id("sha256:abc"));
        assert!(is_sha256_digest(D));
        assert!(!is_sha256_digest(&D[7..]));
    }
}
