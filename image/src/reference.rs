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
        let parsed = parse_reference(input).map_err(|reason| invalid(reason.into()))?;
        if parsed.repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository name must be lowercase".into()));
        }
        // A reference with both a tag and a digest is pulled by digest; the tag is only
        // decoration, as containerd treats it.
        let inner = match (parsed.tag, parsed.digest) {
            (_, Some(digest)) => {
                Reference::with_digest(parsed.registry, parsed.repository, digest.to_string())
            }
            (tag, None) => Reference::with_tag(
                parsed.registry,
                parsed.repository,
                tag.unwrap_or(DEFAULT_TAG).to_string(),
            ),
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

/// Docker Hub's name, what a reference without a registry means.
const DOCKER_HUB: &str = "docker.io";

/// The tag a reference without tag or digest means.
const DEFAULT_TAG: &str = "latest";

/// The longest repository path a registry accepts.
const MAX_REPOSITORY_LEN: usize = 255;

/// A reference split into its parts, normalized as Docker does.
#[derive(Debug, PartialEq, Eq)]
struct Parsed<'a> {
    registry: String,
    repository: String,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// Parses the grammar of distribution's `reference` package (what oci-spec's
/// `Reference::try_from` accepts), by hand: oci-spec matches it with a regular
/// expression that compiles, Unicode classes and all, to about 11 MiB which the
/// daemon then keeps for good after its first pull. The grammar is:
///
/// ```text
/// reference  := name [ ":" tag ] [ "@" digest ]
/// name       := [ domain "/" ] component ( "/" component )*
/// domain     := label ( "." label )* [ ":" port ]      label: [a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?
/// component  := [a-z0-9]+ ( separator [a-z0-9]+ )*    separator: "." | "_" | "__" | "-"+
/// tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
/// digest     := algorithm ":" hex{32,}                algorithm: [A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*
/// ```
///
/// The first part of the name is the registry when it has a `.` or a `:` or is
/// `localhost`; otherwise the registry is Docker Hub (`index.docker.io` is Docker Hub
/// too), where a single-component repository lives under `library/`.
fn parse_reference(input: &str) -> std::result::Result<Parsed<'_>, &'static str> {
    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (input, None),
    };
    // A tag follows the last ':' after the last '/'; a ':' before it is a port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if name.is_empty() {
        return Err("repository name must have at least one component");
    }
    let mut parts = name.split('/');
    let first = parts.next().unwrap_or_default();
    let all_components = name.split('/').all(is_component);
    let domain_then_components = name.contains('/') && is_domain(first) && parts.all(is_component);
    if !all_components && !domain_then_components {
        return Err("invalid reference format");
    }
    if let Some(tag) = tag
        && !is_tag(tag)
    {
        return Err("invalid reference format");
    }
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
            (left.to_string(), right.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if registry == "index.docker.io" {
        registry = DOCKER_HUB.to_string();
    }
    if registry == DOCKER_HUB && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    if repository.len() > MAX_REPOSITORY_LEN {
        return Err("repository name must not be more than 255 characters");
    }
    Ok(Parsed {
        registry,
        repository,
        tag,
        digest,
    })
}

/// `[a-z0-9]+ (separator [a-z0-9]+)*` with separators `.`, `_`, `__` and `-`+.
fn is_component(s: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    let (mut i, mut last_alnum) = (0, false);
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            last_alnum = true;
            continue;
        }
        if !last_alnum {
            return false;
        }
        let run = bytes[i..].iter().take_while(|b| !alnum(b)).count();
        let sep = &s[i..i + run];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
        i += run;
        last_alnum = false;
    }
    last_alnum
}

/// `label ( "." label )* [ ":" port ]`.
fn is_domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(s: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// `algorithm ":" hex{32,}`, and for the algorithms registries use, the right length.
fn check_digest(s: &str) -> std::result::Result<(), &'static str> {
    let Some((algorithm, hex)) = s.split_once(':') else {
        return Err("invalid reference format");
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    });
    if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("invalid reference format");
    }
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != want {
        return Err("invalid checksum digest length");
    }
    Ok(())
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

    /// The hand-written parser accepts what oci-spec's regular expression accepts and
    /// splits it the same way (tests may pay for the regex; the daemon does not). One
    /// difference: oci-spec's `\w` is Unicode-aware, so it takes `a/b:täg`; Docker's
    /// grammar (Go's ASCII `\w`) and crust refuse it.
    #[test]
    fn same_answers_as_oci_spec() {
        let long = format!("a/{}", "b".repeat(260));
        let tag128 = format!("busybox:{}", "t".repeat(128));
        let tag129 = format!("busybox:{}", "t".repeat(129));
        let cases = [
            "busybox",
            "busybox:1.36",
            "busybox:latest@sha256:1111111111111111111111111111111111111111111111111111111111111111",
            "library/busybox",
            "index.docker.io/library/busybox",
            "index.docker.io/busybox",
            "docker.io/busybox",
            "test.com:tag",
            "test.com:5000",
            "test.com/repo:tag",
            "test:5000/repo",
            "test:5000/repo:tag",
            "localhost/x",
            "localhost:5000/x/y/z:v1.2-rc_3",
            "127.0.0.1:5000/a/b:t",
            "registry.k8s.io/pause:3.10",
            "quay.io/a-b/c__d/e.f/g---h:T_x",
            "Upper.Case.Host/repo",
            "UPPER/case",
            "a//b",
            "a/",
            "/a",
            "busybox:",
            ":tag",
            "a:b:c",
            "a@sha256:abc",
            "a@md5:00000000000000000000000000000000",
            "a@sha512:00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
            "a@sha256:000000000000000000000000000000000000000000000000000000000000000g",
            "a@@sha256:1111111111111111111111111111111111111111111111111111111111111111",
            "a_/b",
            "a._b",
            "a__b",
            "a___b",
            "-a",
            "a-",
            "host-/a",
            "-host.x/a",
            "host.x:/a",
            "host.x:12a/a",
            "a/b:-tag",
            "a/b:.tag",
            "a/b:_tag",
            "ünïcode",
            long.as_str(),
            tag128.as_str(),
            tag129.as_str(),
        ];
        for case in cases {
            let ours = parse_reference(case).map(|p| {
                let tag = p.tag.or((p.digest.is_none()).then_some(DEFAULT_TAG));
                (
                    p.registry,
                    p.repository,
                    tag.map(str::to_string),
                    p.digest.map(str::to_string),
                )
            });
            let theirs = Reference::try_from(case).map(|r| {
                (
                    r.registry().to_string(),
                    r.repository().to_string(),
                    r.tag().map(str::to_string),
                    r.digest().map(str::to_string),
                )
            });
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{case:?}: {ours:?} vs {theirs:?}"
            );
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                assert_eq!(a, b, "{case:?}");
            }
        }
        assert!(Reference::try_from("a/b:täg").is_ok());
        assert!(parse_reference("a/b:täg").is_err());
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
