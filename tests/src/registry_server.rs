//! A small, faithful Confluent Schema Registry for tests, served over real HTTP on loopback.
//!
//! It implements the subset `schema_registry_converter` and medallion use, with Confluent's JSON
//! shapes and error codes (TESTING.md): 40401 subject not found, 40402 version not found,
//! 40403 schema not found, 409 incompatible, 42201 invalid schema, 40408 no subject-level
//! config. Compatibility is decided by medallion-contracts' `compat::check` (unit-tested against
//! Avro's rules); what this server adds is the HTTP surface, ids and versions.
//!
//! Fault injection: [`RegistryServer::fail_next`] makes the next requests answer with a status
//! of the test's choosing, [`RegistryServer::set_outage`] makes every request fail (a status, or
//! a connection accepted and never answered) until it is lifted,
//! [`RegistryServer::refuse_connections`] closes the port until
//! [`RegistryServer::accept_connections`] opens it again, and
//! [`RegistryServer::requests`] counts requests per route, so tests can check what is cached.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use apache_avro::Schema;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use medallion_contracts::compat::{check, CompatibilityLevel};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// A running test registry. Dropping it stops the server.
#[derive(Debug)]
pub struct RegistryServer {
    address: SocketAddr,
    state: Arc<Mutex<RegistryState>>,
    app: Router,
    /// The listening server, with the sender that shuts it down; `None` while connections are
    /// refused.
    server: Mutex<Option<Listening>>,
}

#[derive(Debug)]
struct Listening {
    task: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Listening {
    fn serve(listener: tokio::net::TcpListener, app: Router) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Self { task, stop }
    }
}

#[derive(Debug, Default)]
struct RegistryState {
    /// id - 1 -> (schema text, parsed).
    schemas: Vec<(String, Schema)>,
    subjects: BTreeMap<String, Vec<u32>>,
    levels: HashMap<String, CompatibilityLevel>,
    failures: Vec<StatusCode>,
    outage: Option<Outage>,
    requests: HashMap<&'static str, usize>,
}

/// How the registry fails every request during an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Answers with this status and Confluent's error body.
    Status(StatusCode),
    /// Accepts the request and never answers (the client's timeout ends it).
    Hang,
}

type Shared = Arc<Mutex<RegistryState>>;

fn lock(state: &Shared) -> MutexGuard<'_, RegistryState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn error(status: StatusCode, code: u32, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error_code": code, "message": message.into()})),
    )
        .into_response()
}

impl RegistryServer {
    /// Starts a registry on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/schemas/ids/{id}", get(schema_by_id))
            .route("/subjects", get(subjects))
            .route("/subjects/{subject}", post(lookup))
            .route("/subjects/{subject}/versions", get(versions).post(register))
            .route("/subjects/{subject}/versions/{version}", get(version))
            .route(
                "/compatibility/subjects/{subject}/versions",
                post(compatibility_latest),
            )
            .route(
                "/compatibility/subjects/{subject}/versions/{version}",
                post(compatibility),
            )
            .route("/config/{subject}", get(get_config).put(put_config))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                inject_failures,
            ))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = Listening::serve(listener, app.clone());
        Ok(Self {
            address,
            state,
            app,
            server: Mutex::new(Some(server)),
        })
    }

    /// Stops listening and closes idle connections, so the next request is refused (nothing
    /// listens on the port) until [`RegistryServer::accept_connections`]. Requests in flight get
    /// five seconds to finish (an [`Outage::Hang`] is cut off).
    pub async fn refuse_connections(&self) {
        let server = self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(Listening { mut task, stop }) = server {
            let _ = stop.send(());
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    /// Listens again on the same address after [`RegistryServer::refuse_connections`].
    pub async fn accept_connections(&self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.address).await?;
        let server = Listening::serve(listener, self.app.clone());
        *self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(server);
        Ok(())
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The next `count` requests answer `status` with Confluent's error body.
    pub fn fail_next(&self, count: usize, status: StatusCode) {
        lock(&self.state)
            .failures
            .extend(std::iter::repeat_n(status, count));
    }

    /// Every request fails as `outage` says until `set_outage(None)`.
    pub fn set_outage(&self, outage: Option<Outage>) {
        lock(&self.state).outage = outage;
    }

    /// How many requests reached `route` (e.g. `GET /schemas/ids`), failed ones included.
    pub fn requests(&self, route: &str) -> usize {
        lock(&self.state).requests.get(route).copied().unwrap_or(0)
    }

    /// The subject's compatibility level, if one is set.
    pub fn level(&self, subject: &str) -> Option<CompatibilityLevel> {
        lock(&self.state).levels.get(subject).copied()
    }

    /// Registers `schema` under `subject` without any compatibility check (an operator forcing a
    /// change); returns its id.
    pub fn force_register(&self, subject: &str, schema: &str) -> anyhow::Result<u32> {
        let parsed = Schema::parse_str(schema)?;
        let mut state = lock(&self.state);
        Ok(state.add(subject, schema, parsed))
    }

    /// Stops serving at once: later requests fail to connect.
    pub fn stop(&self) {
        let server = self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(server) = server {
            server.task.abort();
        }
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RegistryState {
    fn id_of(&self, schema: &Schema) -> Option<u32> {
        let canonical = schema.canonical_form();
        self.schemas
            .iter()
            .position(|(_, known)| known.canonical_form() == canonical)
            .map(|index| index as u32 + 1)
    }

    fn add(&mut self, subject: &str, text: &str, parsed: Schema) -> u32 {
        let id = match self.id_of(&parsed) {
            Some(id) => id,
            None => {
                self.schemas.push((text.to_owned(), parsed));
                self.schemas.len() as u32
            }
        };
        let versions = self.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        id
    }

    fn existing(&self, subject: &str) -> Vec<&Schema> {
        self.subjects
            .get(subject)
            .into_iter()
            .flatten()
            .map(|id| &self.schemas[*id as usize - 1].1)
            .collect()
    }

    fn level(&self, subject: &str) -> CompatibilityLevel {
        self.levels.get(subject).copied().unwrap_or_default()
    }
}

fn route_name(method: &axum::http::Method, path: &str) -> &'static str {
    let get = method == axum::http::Method::GET;
    match () {
        _ if path.starts_with("/schemas/ids/") => "GET /schemas/ids",
        _ if path.starts_with("/compatibility/") => "POST /compatibility",
        _ if path.starts_with("/config/") && get => "GET /config",
        _ if path.starts_with("/config/") => "PUT /config",
        _ if path.ends_with("/versions") && !get => "POST /subjects/versions",
        _ if path.starts_with("/subjects/") && !get => "POST /subjects",
        _ => "GET /subjects",
    }
}

async fn inject_failures(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let failure = {
        let mut guard = lock(&state);
        let route = route_name(request.method(), request.uri().path());
        *guard.requests.entry(route).or_default() += 1;
        if let Some(outage) = guard.outage {
            Some(outage)
        } else if guard.failures.is_empty() {
            None
        } else {
            Some(Outage::Status(guard.failures.remove(0)))
        }
    };
    match failure {
        Some(Outage::Hang) => std::future::pending().await,
        Some(Outage::Status(status)) => error(
            status,
            u32::from(status.as_u16()) * 100 + 1,
            "injected failure",
        ),
        None => next.run(request).await,
    }
}

fn parse_body(body: &Value) -> Result<(String, Schema), Box<Response>> {
    let Some(text) = body.get("schema").and_then(Value::as_str) else {
        return Err(Box::new(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Empty schema",
        )));
    };
    if let Some(kind) = body.get("schemaType").and_then(Value::as_str) {
        if kind != "AVRO" {
            return Err(Box::new(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                42201,
                format!("Unsupported schema type {kind}"),
            )));
        }
    }
    match Schema::parse_str(text) {
        Ok(schema) => Ok((text.to_owned(), schema)),
        Err(parse) => Err(Box::new(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {parse}"),
        ))),
    }
}

async fn schema_by_id(State(state): State<Shared>, Path(id): Path<u32>) -> Response {
    let state = lock(&state);
    match id
        .checked_sub(1)
        .and_then(|index| state.schemas.get(index as usize))
    {
        Some((text, _)) => Json(json!({"schema": text})).into_response(),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn subjects(State(state): State<Shared>) -> Response {
    let state = lock(&state);
    Json(state.subjects.keys().cloned().collect::<Vec<_>>()).into_response()
}

async fn versions(State(state): State<Shared>, Path(subject): Path<String>) -> Response {
    let state = lock(&state);
    match state.subjects.get(&subject) {
        Some(ids) => Json((1..=ids.len()).collect::<Vec<_>>()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        ),
    }
}

fn version_body(state: &RegistryState, subject: &str, version: &str) -> Response {
    let Some(ids) = state.subjects.get(subject) else {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        );
    };
    let index = match version {
        "latest" => ids.len().checked_sub(1),
        number => number
            .parse::<usize>()
            .ok()
            .and_then(|number| number.checked_sub(1)),
    };
    match index.and_then(|index| ids.get(index).map(|id| (index, *id))) {
        Some((index, id)) => Json(json!({
            "subject": subject,
            "version": index + 1,
            "id": id,
            "schema": state.schemas[id as usize - 1].0,
        }))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, 40402, "Version not found."),
    }
}

async fn version(
    State(state): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Response {
    version_body(&lock(&state), &subject, &version)
}

async fn register(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let (text, schema) = match parse_body(&body) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    let mut state = lock(&state);
    if let Some(id) = state.id_of(&schema) {
        if state
            .subjects
            .get(&subject)
            .is_some_and(|ids| ids.contains(&id))
        {
            return Json(json!({"id": id})).into_response();
        }
    }
    let level = state.level(&subject);
    if let Err(reason) = check(level, &schema, &state.existing(&subject)) {
        return error(
            StatusCode::CONFLICT,
            409,
            format!("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{reason}]"),
        );
    }
    let id = state.add(&subject, &text, schema);
    Json(json!({"id": id})).into_response()
}

async fn lookup(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let (_, schema) = match parse_body(&body) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    let state = lock(&state);
    let Some(ids) = state.subjects.get(&subject) else {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        );
    };
    match state
        .id_of(&schema)
        .and_then(|id| ids.iter().position(|known| *known == id))
    {
        Some(index) => version_body(&state, &subject, &(index + 1).to_string()),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

fn compatibility_answer(state: &RegistryState, subject: &str, body: &Value) -> Response {
    let (_, schema) = match parse_body(body) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    if !state.subjects.contains_key(subject) {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        );
    }
    let compatible = check(state.level(subject), &schema, &state.existing(subject)).is_ok();
    Json(json!({"is_compatible": compatible})).into_response()
}

async fn compatibility_latest(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    compatibility_answer(&lock(&state), &subject, &body)
}

async fn compatibility(
    State(state): State<Shared>,
    Path((subject, _version)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    compatibility_answer(&lock(&state), &subject, &body)
}

async fn get_config(State(state): State<Shared>, Path(subject): Path<String>) -> Response {
    match lock(&state).levels.get(&subject) {
        Some(level) => Json(json!({"compatibilityLevel": level.as_str()})).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        ),
    }
}

async fn put_config(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let level = body
        .get("compatibility")
        .and_then(Value::as_str)
        .map(str::parse::<CompatibilityLevel>);
    match level {
        Some(Ok(level)) => {
            lock(&state).levels.insert(subject, level);
            Json(json!({"compatibility": level.as_str()})).into_response()
        }
        _ => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            "Invalid compatibility level",
        ),
    }
}
