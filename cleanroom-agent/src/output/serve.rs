//! The agent's HTTP interface: `GET /metrics` (Prometheus text), `GET /api/v1/cgroups`,
//! `/api/v1/cgroups/{id}` (live cgroups, JSON), `GET /api/v1/runs`, `/api/v1/runs/{id}` (stored
//! reports, JSON), `/runs/{id}` (a report as HTML) and `/` (a page of live cgroups and recent
//! runs).
//!
//! What the answers hold comes from a [`View`] the agent provides; this module only routes,
//! checks the bearer token and shapes errors: every failure is a JSON object `{"error": "..."}`
//! with its status (400 a malformed id, 401 a missing or wrong token, 404 an unknown id or path,
//! 500 the view failed). Listening anywhere but loopback requires a token ([`check_listen`]).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

/// The default address: loopback, the port Prometheus exporters of this kind use.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Why the HTTP interface cannot start as configured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServeError {
    /// A non-loopback address without a token would show every cgroup to the network.
    #[error(
        "listen = {0} is reachable from other hosts: set a bearer `token` in the agent's config \
         (or listen on 127.0.0.1)"
    )]
    TokenRequired(SocketAddr),
    /// An empty token would let everyone in.
    #[error("the agent's `token` is empty: set a secret, or remove it and listen on 127.0.0.1")]
    EmptyToken,
}

/// Refuses a listen address reachable from other hosts unless a token guards it.
pub fn check_listen(listen: SocketAddr, token: Option<&str>) -> Result<(), ServeError> {
    match token {
        Some("") => Err(ServeError::EmptyToken),
        Some(_) => Ok(()),
        None if listen.ip().is_loopback() => Ok(()),
        None => Err(ServeError::TokenRequired(listen)),
    }
}

/// What the agent shows: answers computed at request time. `None` is "no such id".
pub trait View: Send + Sync + 'static {
    /// The Prometheus text exposition of every live cgroup.
    fn metrics(&self) -> Result<String, String>;
    /// Live cgroups, a summary each.
    fn cgroups(&self) -> Result<Value, String>;
    /// One live cgroup: totals and recent series.
    fn cgroup(&self, id: u64) -> Result<Option<Value>, String>;
    /// Stored runs, newest first, a summary each.
    fn runs(&self) -> Result<Value, String>;
    /// One stored run's JSON report.
    fn run(&self, id: i64) -> Result<Option<Value>, String>;
    /// One stored run's HTML report.
    fn run_html(&self, id: i64) -> Result<Option<String>, String>;
    /// The front page.
    fn index_html(&self) -> Result<String, String>;
}

/// A JSON error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// A view's failure, or its `None`, as an answer.
fn answer<T: IntoResponse>(result: Result<Option<T>, String>, what: &str) -> Response {
    match result {
        Ok(Some(body)) => body.into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no {what} with that id")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// An id in a path: a number, else a 400 naming what was given.
fn parse_id<T: std::str::FromStr>(raw: &str) -> Result<T, Box<Response>> {
    raw.parse().map_err(|_| {
        let shown: String = raw.chars().take(40).collect();
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("`{shown}` is not an id: ids are numbers"),
        ))
    })
}

/// The routes over `view`; with `token`, every request must carry `Authorization: Bearer
/// <token>`.
pub fn router(view: Arc<dyn View>, token: Option<String>) -> Router {
    let routes = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/api/v1/cgroups", get(cgroups))
        .route("/api/v1/cgroups/{id}", get(cgroup))
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/runs/{id}", get(run))
        .route("/runs/{id}", get(run_html))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such path") })
        .with_state(view);
    match token {
        Some(token) => {
            let expected: Arc<str> = format!("Bearer {token}").into();
            routes.layer(middleware::from_fn(move |request: Request, next: Next| {
                let expected = Arc::clone(&expected);
                async move { authorize(&expected, request, next).await }
            }))
        }
        None => routes,
    }
}

/// Lets a request through only with the expected `Authorization` header (compared in constant
/// time, so its timing says nothing of the token).
async fn authorize(expected: &str, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if constant_time_eq(given, expected.as_bytes()) {
        next.run(request).await
    } else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "this agent needs `Authorization: Bearer <token>`",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

/// Whether `a` equals `b`, in a time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn index(State(view): State<Arc<dyn View>>) -> Response {
    answer(view.index_html().map(|h| Some(Html(h))), "page")
}

async fn metrics(State(view): State<Arc<dyn View>>) -> Response {
    match view.metrics() {
        Ok(text) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::output::exposition::CONTENT_TYPE),
            );
            (headers, text).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn cgroups(State(view): State<Arc<dyn View>>) -> Response {
    answer(view.cgroups().map(|v| Some(Json(v))), "cgroups")
}

async fn cgroup(State(view): State<Arc<dyn View>>, Path(raw): Path<String>) -> Response {
    match parse_id::<u64>(&raw) {
        Ok(id) => answer(view.cgroup(id).map(|v| v.map(Json)), "cgroup"),
        Err(response) => *response,
    }
}

async fn runs(State(view): State<Arc<dyn View>>) -> Response {
    answer(view.runs().map(|v| Some(Json(v))), "runs")
}

async fn run(State(view): State<Arc<dyn View>>, Path(raw): Path<String>) -> Response {
    match parse_id::<i64>(&raw) {
        Ok(id) => answer(view.run(id).map(|v| v.map(Json)), "run"),
        Err(response) => *response,
    }
}

async fn run_html(State(view): State<Arc<dyn View>>, Path(raw): Path<String>) -> Response {
    match parse_id::<i64>(&raw) {
        Ok(id) => answer(view.run_html(id).map(|v| v.map(Html)), "run"),
        Err(response) => *response,
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    /// One live cgroup (id 7) and one stored run (id 1).
    struct Fake;

    impl View for Fake {
        fn metrics(&self) -> Result<String, String> {
            Ok("cleanroom_samples_total 3\n".into())
        }
        fn cgroups(&self) -> Result<Value, String> {
            Ok(json!([{ "id": 7, "cgroup": "docker/abc" }]))
        }
        fn cgroup(&self, id: u64) -> Result<Option<Value>, String> {
            Ok((id == 7).then(|| json!({ "id": 7 })))
        }
        fn runs(&self) -> Result<Value, String> {
            Err("the store is locked".into())
        }
        fn run(&self, id: i64) -> Result<Option<Value>, String> {
            Ok((id == 1).then(|| json!({ "verdict": "pass" })))
        }
        fn run_html(&self, id: i64) -> Result<Option<String>, String> {
            Ok((id == 1).then(|| "<html>run 1</html>".to_owned()))
        }
        fn index_html(&self) -> Result<String, String> {
            Ok("<html>cleanroom</html>".into())
        }
    }

    async fn get(token: Option<&str>, path: &str, auth: Option<&str>) -> (StatusCode, String) {
        let app = router(Arc::new(Fake), token.map(str::to_owned));
        let mut request = Request::builder().uri(path);
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let response = app
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn each_path_answers_and_failures_are_json_with_their_status() {
        block_on(async {
            assert_eq!(
                get(None, "/metrics", None).await,
                (StatusCode::OK, "cleanroom_samples_total 3\n".into())
            );
            assert_eq!(get(None, "/api/v1/cgroups/7", None).await.1, r#"{"id":7}"#);
            assert_eq!(get(None, "/runs/1", None).await.1, "<html>run 1</html>");
            assert_eq!(get(None, "/", None).await.1, "<html>cleanroom</html>");
            let (status, body) = get(None, "/api/v1/cgroups/8", None).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(body, r#"{"error":"no cgroup with that id"}"#);
            let (status, body) = get(None, "/api/v1/runs/x%22y", None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(body.contains("is not an id"), "{body}");
            let (status, body) = get(None, "/api/v1/runs", None).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(body, r#"{"error":"the store is locked"}"#);
            let (status, body) = get(None, "/nothing/here", None).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(body, r#"{"error":"no such path"}"#);
        });
    }

    #[test]
    fn with_a_token_only_its_bearer_gets_in() {
        block_on(async {
            let token = Some("s3cret");
            let (status, body) = get(token, "/metrics", None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(body.starts_with(r#"{"error":"#), "{body}");
            assert_eq!(
                get(token, "/metrics", Some("Bearer wrong")).await.0,
                StatusCode::UNAUTHORIZED
            );
            assert_eq!(
                get(token, "/metrics", Some("s3cret")).await.0,
                StatusCode::UNAUTHORIZED
            );
            assert_eq!(
                get(token, "/metrics", Some("Bearer s3cret")).await.0,
                StatusCode::OK
            );
            // An unknown path is not told apart from a known one without the token.
            assert_eq!(
                get(token, "/nothing", None).await.0,
                StatusCode::UNAUTHORIZED
            );
        });
    }

    #[test]
    fn only_loopback_may_listen_without_a_token() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(check_listen(addr(DEFAULT_LISTEN), None), Ok(()));
        assert_eq!(check_listen(addr("[::1]:9464"), None), Ok(()));
        assert_eq!(
            check_listen(addr("0.0.0.0:9464"), None),
            Err(ServeError::TokenRequired(addr("0.0.0.0:9464")))
        );
        assert_eq!(check_listen(addr("0.0.0.0:9464"), Some("t")), Ok(()));
        assert_eq!(
            check_listen(addr("127.0.0.1:9464"), Some("")),
            Err(ServeError::EmptyToken)
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
