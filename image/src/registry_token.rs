//! The registry token dance: what a 401's `WWW-Authenticate` challenge asks for, and
//! the bearer token its realm hands out for a repository's pull scope.
//!
//! - Basic credentials and anonymous pulls ask the realm with a GET, as the registry
//!   token spec (and containerd's `FetchToken`) does: basic auth on the request when
//!   there are credentials.
//! - An identity token (CRI's `identity_token`, an OAuth2 refresh token from Docker's
//!   credential helpers, ACR, GCR) is exchanged with a form POST, `grant_type=
//!   refresh_token`, as containerd's `FetchTokenWithOAuth` does; the `access_token` of
//!   the answer is the bearer token.
//!
//! The realm is the registry's choice, and credentials go there as containerd sends
//! them, but not over plain HTTP unless the registry itself was configured to be
//! reached that way (see [`crate::registry`]), and never on to where a token server
//! redirects: token requests follow no redirects. Answers are read up to
//! [`MAX_TOKEN_RESPONSE_BYTES`].

use base64::Engine;
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};

use crate::error::{ErrorKind, ImageError, Op, Result};
use crate::registry::{Auth, Route};
use crate::registry_http::{self, Capped};

/// Containerd's limit for a token server's answer: tokens are JWTs of a few KiB.
pub(crate) const MAX_TOKEN_RESPONSE_BYTES: u64 = 4 << 20;

/// The OAuth2 `client_id` of the refresh-token exchange (containerd sends
/// `containerd-client`).
const OAUTH_CLIENT_ID: &str = "crust";

/// A `Bearer` challenge: where to get a token, and for which service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BearerChallenge {
    /// The token server's URL, as the registry gave it.
    pub(crate) realm: String,
    /// The `service` to ask the token server for, if the registry named one.
    pub(crate) service: Option<String>,
}

/// The first `Bearer` challenge with a realm among a response's `WWW-Authenticate`
/// headers; `None` when the registry asks for basic credentials or nothing.
pub(crate) fn bearer_challenge(headers: &reqwest::header::HeaderMap) -> Option<BearerChallenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(http_auth::ChallengeParser::new)
        .filter_map(|c| c.ok())
        .filter(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        .find_map(|c| {
            let param = |name: &str| {
                c.params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_unescaped())
            };
            Some(BearerChallenge {
                realm: param("realm").filter(|r| !r.is_empty())?,
                service: param("service").filter(|s| !s.is_empty()),
            })
        })
}

/// The pull scope of a repository, as the token request names it.
pub(crate) fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// The form body of the OAuth2 refresh-token exchange.
pub(crate) fn refresh_form(refresh_token: &str, service: Option<&str>, scope: &str) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "refresh_token")
        .append_pair("refresh_token", refresh_token)
        .append_pair("service", service.unwrap_or_default())
        .append_pair("scope", scope)
        .append_pair("client_id", OAUTH_CLIENT_ID);
    form.finish()
}

/// The answer of a token server (the GET form's `token`, or OAuth2's `access_token`;
/// the other fields, such as `expires_in`, are not used: a token is kept until the
/// registry refuses it).
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

/// The bearer token in a token server's answer. The OAuth2 exchange must answer with
/// an `access_token`; the GET form may use either name (`access_token` wins, as in
/// containerd).
pub(crate) fn token_from_answer(body: &[u8], oauth: bool) -> Option<String> {
    let answer: TokenAnswer = serde_json::from_slice(body).ok()?;
    let token = match (oauth, answer.access_token.is_empty()) {
        (_, false) => answer.access_token,
        (false, true) => answer.token,
        (true, true) => return None,
    };
    // It goes into a header: anything that cannot be one is no token.
    (!token.is_empty() && HeaderValue::from_str(&format!("Bearer {token}")).is_ok())
        .then_some(token)
}

/// Whether credentials may go to `realm` from a registry reached over
/// `registry_scheme`: over https always; over plain HTTP only when the registry itself
/// is, which carries credentials only when hosts.toml asks for it.
fn may_see_credentials(realm: &Url, registry_scheme: &str) -> bool {
    realm.scheme() == "https" || registry_scheme == "http"
}

/// Fetches a bearer token for `repository` from the realm `challenge` names, with the
/// route's credentials.
pub(crate) async fn fetch_token(
    image: &str,
    route: &Route,
    challenge: &BearerChallenge,
    repository: &str,
) -> Result<String> {
    let error = |message: String, kind: ErrorKind| ImageError::Source {
        op: Op::Pull,
        reference: image.to_string(),
        message: format!("{}: {message}", route.endpoint),
        kind,
    };
    let mut realm = Url::parse(&challenge.realm)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            error(
                format!("token realm {:?} is not an http(s) URL", challenge.realm),
                ErrorKind::PermissionDenied,
            )
        })?;
    // The realm without its query, for messages: it may carry anything.
    let shown = format!("{}://{}{}", realm.scheme(), realm.authority(), realm.path());
    if !matches!(route.auth, Auth::Anonymous) && !may_see_credentials(&realm, route.scheme) {
        return Err(error(
            format!(
                "credentials withheld from token realm {shown}: plain HTTP, while the \
                 registry is reached over https"
            ),
            ErrorKind::PermissionDenied,
        ));
    }
    let scope = pull_scope(repository);
    let (request, oauth) = match &route.auth {
        Auth::RefreshToken(token) => (
            route
                .token_http
                .post(realm)
                .header(
                    CONTENT_TYPE,
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body(refresh_form(token, challenge.service.as_deref(), &scope)),
            true,
        ),
        auth => {
            {
                let mut query = realm.query_pairs_mut();
                if let Some(service) = &challenge.service {
                    query.append_pair("service", service);
                }
                query.append_pair("scope", &scope);
            }
            let mut request = route.token_http.get(realm);
            if let Auth::Basic(user, pass) = auth {
                request = request.header(AUTHORIZATION, basic_header(user, pass));
            }
            (request, false)
        }
    };
    let what = if oauth {
        "the identity token exchange"
    } else {
        "the token request"
    };
    let response = request.send().await.map_err(|e| {
        error(
            format!("token server {shown}: {}", crate::registry::error_chain(&e)),
            ErrorKind::Unavailable,
        )
    })?;
    let status = response.status();
    if status != StatusCode::OK {
        let excerpt = registry_http::error_excerpt(response).await;
        let kind = match status.as_u16() {
            // OAuth2 refuses a bad grant with 400 invalid_grant.
            400 | 401 | 403 => ErrorKind::PermissionDenied,
            429 | 502..=504 => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        return Err(error(
            format!("token server {shown} refused {what}: HTTP {status}{excerpt}"),
            kind,
        ));
    }
    let body: Bytes = match registry_http::read_capped(response, MAX_TOKEN_RESPONSE_BYTES).await {
        Ok(Capped::Whole(body)) => body,
        Ok(Capped::TooLarge) => {
            return Err(error(
                format!(
                    "token server {shown}: answer over {} MiB",
                    MAX_TOKEN_RESPONSE_BYTES >> 20
                ),
                ErrorKind::PermissionDenied,
            ));
        }
        Err(e) => {
            return Err(error(
                format!("token server {shown}: {}", crate::registry::error_chain(&e)),
                ErrorKind::Unavailable,
            ));
        }
    };
    let field = if oauth { "access_token" } else { "token" };
    token_from_answer(&body, oauth).ok_or_else(|| {
        error(
            format!("token server {shown}: no {field} in its answer to {what}"),
            ErrorKind::PermissionDenied,
        )
    })
}

/// An `Authorization` value for basic credentials, marked sensitive so it is never
/// logged.
pub(crate) fn basic_header(user: &str, pass: &str) -> HeaderValue {
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    // base64 is always a valid header value.
    let mut value = HeaderValue::from_str(&format!("Basic {pair}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    fn challenges(values: &[&str]) -> Option<BearerChallenge> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
        }
        bearer_challenge(&headers)
    }

    #[test]
    fn bearer_challenges_are_found_among_others() {
        assert_eq!(
            challenges(&[
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ]),
            Some(BearerChallenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        // Several challenges in one header, or one per header; the scheme in any case.
        let expected = Some(BearerChallenge {
            realm: "https://r/t".into(),
            service: None,
        });
        assert_eq!(
            challenges(&[r#"Basic realm="x", bearer realm="https://r/t""#]),
            expected
        );
        assert_eq!(
            challenges(&[r#"Basic realm="x""#, r#"BEARER realm="https://r/t""#]),
            expected
        );
        assert_eq!(challenges(&[r#"Basic realm="registry""#]), None);
        assert_eq!(challenges(&[r#"Bearer service="no-realm""#]), None);
        assert_eq!(challenges(&[r#"Bearer realm="""#]), None);
        assert_eq!(challenges(&["garbage \" ,,"]), None);
        assert_eq!(challenges(&[]), None);
    }

    #[test]
    fn the_refresh_form_is_what_containerd_posts() {
        let form = refresh_form("r&t=1 +", Some("reg.example"), &pull_scope("team/app"));
        let pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
            .into_owned()
            .collect();
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("grant_type", "refresh_token"),
                ("refresh_token", "r&t=1 +"),
                ("service", "reg.example"),
                ("scope", "repository:team/app:pull"),
                ("client_id", "crust"),
            ]
        );
        // Reserved characters are escaped, not passed on to split the form.
        assert!(form.contains("refresh_token=r%26t%3D1+%2B&"), "{form}");
        assert!(refresh_form("t", None, "s").contains("&service=&"));
    }

    #[test]
    fn token_answers_are_parsed_as_containerd_does() {
        let parse = |body: &str, oauth| token_from_answer(body.as_bytes(), oauth);
        assert_eq!(parse(r#"{"token":"a"}"#, false).as_deref(), Some("a"));
        assert_eq!(
            parse(r#"{"token":"a","access_token":"b"}"#, false).as_deref(),
            Some("b")
        );
        assert_eq!(
            parse(
                r#"{"access_token":"b","expires_in":300,"refresh_token":"r","scope":"s"}"#,
                true
            )
            .as_deref(),
            Some("b")
        );
        // OAuth2 answers in access_token only.
        assert_eq!(parse(r#"{"token":"a"}"#, true), None);
        assert_eq!(parse(r#"{"access_token":""}"#, true), None);
        assert_eq!(parse(r#"{}"#, false), None);
        assert_eq!(parse("not json", false), None);
        assert_eq!(parse(r#"{"token":7}"#, false), None);
        // A token that could not be a header value is refused, not sent half.
        assert_eq!(parse("{\"token\":\"a\\nb\"}", false), None);
    }

    #[test]
    fn credentials_reach_a_plain_http_realm_only_from_a_plain_http_registry() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(may_see_credentials(
            &url("https://auth.example/token"),
            "https"
        ));
        assert!(may_see_credentials(
            &url("https://auth.example/token"),
            "http"
        ));
        assert!(!may_see_credentials(
            &url("http://auth.example/token"),
            "https"
        ));
        assert!(may_see_credentials(
            &url("http://127.0.0.1:5001/token"),
            "http"
        ));
    }

    #[test]
    fn basic_headers_are_sensitive() {
        let h = basic_header("u", "p");
        assert_eq!(h.to_str().unwrap(), "Basic dTpw");
        assert!(h.is_sensitive());
    }
}
