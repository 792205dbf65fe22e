//! The compiled, immutable gateway: routes, pipelines, endpoints and listeners built from one
//! load of the config directory. Serving reads it through an `ArcSwap`; a reload builds a new one.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use crate::config::error::ConfigErrors;
use crate::config::gateway_file::{GatewayFile, HttpsDef, ListenerDef};
use crate::config::system_file::SystemFile;
use crate::config::LoadedConfig;
use crate::consumers::cache::ConsumerCache;
use crate::counters::Counters;
use crate::pipeline::context::ApiEndpoint;
use crate::pipeline::{Condition, Pipeline, Step};
use crate::policies::{self, BuildContext};
use crate::routing::{HostMatcher, PathMatcher, Route, Router, Target};
use crate::upstream::{ServiceEndpoint, UpstreamTarget};

/// What every compiled config shares and a reload keeps: rate-limit windows and the consumers.
#[derive(Clone)]
pub struct Shared {
    pub counters: Arc<Counters>,
    pub consumers: Arc<ConsumerCache>,
    /// Every upstream url's health and load.
    pub upstreams: Arc<crate::upstream::state::Registry>,
    /// Redis, when configured: rate-limit windows are shared through it.
    pub shared_windows: Option<Arc<dyn crate::store::Store>>,
    /// What the `proxy` steps to the gateway's own Admin API send its storage route, when
    /// there is an Admin API.
    pub storage_pass: Option<crate::admin::StoragePass>,
}

impl Shared {
    /// For checking a config: nothing behind it.
    pub fn detached() -> Shared {
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::embedded::EmbeddedStore::in_memory());
        Shared {
            counters: Arc::new(Counters::default()),
            consumers: Arc::new(ConsumerCache::new(
                store,
                crate::consumers::layout::Layout::new("EG"),
            )),
            upstreams: Arc::default(),
            shared_windows: None,
            storage_pass: None,
        }
    }
}

/// Default path of Kargo's healthcheck plugin.
pub const HEALTHCHECK_PATH: &str = "/healthcheck";
/// Default path of Kargo's metrics plugin (on the Admin API).
pub const METRICS_PATH: &str = "/metrics";

/// A plugin's route (its `endpointName`, else `default`) as Express compiles it; one Express
/// could not compile is an error at its place.
fn plugin_route(
    system: &SystemFile,
    name: &str,
    default: &str,
    errors: &mut ConfigErrors,
) -> PathMatcher {
    let path = system.plugin_endpoint(name, default);
    PathMatcher::express(&path).unwrap_or_else(|why| {
        if let Some(at) = system.plugin(name).and_then(|p| p.get("endpointName")) {
            errors.push(&at.pos, format!("`endpointName` `{path}`: {why}"));
        }
        // (Not served: the error fails the config.)
        PathMatcher::any()
    })
}

pub struct Gateway {
    pub router: Router,
    /// The apiEndpoints, one per entry (an endpoint written as a list has several, each
    /// with its own scopes), those of one endpoint side by side.
    pub endpoints: Vec<Arc<ApiEndpoint>>,
    /// Query parameters that carry credentials (redacted in the access log).
    pub secret_query_params: Vec<String>,
    /// Kargo's storage route on the admin port, when configured.
    pub storage: Option<Arc<crate::admin::storage::Storage>>,
    pub pipelines: Vec<Pipeline>,
    pub service_endpoints: HashMap<String, Arc<ServiceEndpoint>>,
    /// Kargo's healthcheck plugin's route on the gateway's port, and its metrics plugin's on
    /// the Admin API's (`plugins.<name>.endpointName`), matched as Express matches a plugin's
    /// route: any case, one trailing slash (Kargo's `prometheus` route proxies `/metrics`
    /// with `stripPath` to the Admin API's `/metrics` url, which asks for `/metrics/`: it was
    /// 404 while the path had to be equal).
    pub healthcheck: PathMatcher,
    pub metrics: PathMatcher,
    pub http: Option<ListenerDef>,
    pub https: Option<HttpsDef>,
    pub admin: Option<ListenerDef>,
    pub system: SystemFile,
    /// The gateway config as JSON, for the Admin API.
    pub raw: serde_json::Value,
}

impl Gateway {
    /// Compiles a loaded config; every problem found is reported at once.
    pub fn build(loaded: LoadedConfig, shared: &Shared) -> Result<Gateway, ConfigErrors> {
        let config_dirs = loaded.dirs.clone();
        let LoadedConfig {
            gateway: gw,
            system,
            mut errors,
            ..
        } = loaded;
        let (secret_query_params, secret_headers) = secrets(&gw);
        let service_endpoints =
            build_service_endpoints(&gw, &shared.upstreams, &secret_query_params, &mut errors);
        check_declared_policies(&gw, &mut errors);
        let cx = BuildContext {
            storage_pass: shared.storage_pass.as_ref(),
            secret_query_params: &secret_query_params,
            secret_headers: &secret_headers,
            service_endpoints: &service_endpoints,
            counters: &shared.counters,
            consumers: &shared.consumers,
            shared_windows: shared.shared_windows.as_ref(),
            config_dirs: &config_dirs,
        };
        let pipelines = build_pipelines(&gw, &cx, &mut errors);
        // One per entry of each apiEndpoint (an endpoint may be a list of them): a request
        // needs the scopes of the entry it matched, as in EG, not those of all its entries.
        let endpoints: Vec<Arc<ApiEndpoint>> = gw
            .api_endpoints
            .iter()
            .flat_map(|e| {
                let name: Arc<str> = Arc::from(e.name.as_str());
                e.entries.iter().map(move |d| {
                    Arc::new(ApiEndpoint {
                        name: name.clone(),
                        scopes: d.scopes.clone(),
                        metrics: crate::metrics::metrics().endpoint(&name),
                    })
                })
            })
            .collect();
        let storage =
            crate::admin::storage::Storage::from_system(&system, &mut errors).map(Arc::new);
        let router = build_router(&gw, &mut errors);
        let healthcheck = plugin_route(&system, "healthcheck", HEALTHCHECK_PATH, &mut errors);
        let metrics = plugin_route(&system, "metrics", METRICS_PATH, &mut errors);
        errors.into_result()?;
        Ok(Gateway {
            router,
            endpoints,
            secret_query_params,
            storage,
            pipelines,
            service_endpoints,
            healthcheck,
            metrics,
            http: gw.http,
            https: gw.https,
            admin: gw.admin,
            system,
            raw: gw.raw,
        })
    }

    /// Every upstream target (service endpoints, storage providers), for DNS refresh.
    pub fn targets(&self) -> impl Iterator<Item = &Arc<UpstreamTarget>> {
        let storage = self
            .storage
            .iter()
            .flat_map(|s| s.providers.iter().map(|p| &p.target));
        self.service_endpoints
            .values()
            .flat_map(|s| s.targets.iter())
            .chain(storage)
    }
}

fn build_service_endpoints(
    gw: &GatewayFile,
    registry: &crate::upstream::state::Registry,
    secret_query_params: &[String],
    errors: &mut ConfigErrors,
) -> HashMap<String, Arc<ServiceEndpoint>> {
    let mut out = HashMap::new();
    for def in &gw.service_endpoints {
        let mut targets = Vec::new();
        for (url, pos) in &def.urls {
            match UpstreamTarget::parse(url) {
                Ok(t) => targets.push(Arc::new(t)),
                Err(why) => errors.push(pos, format!("serviceEndpoint `{}`: {why}", def.name)),
            }
        }
        let settings = upstream_settings(def, errors);
        out.insert(
            def.name.clone(),
            Arc::new(
                ServiceEndpoint::new(
                    &def.name,
                    targets,
                    def.proxy_options.clone(),
                    settings,
                    registry,
                )
                .hashing_without(secret_query_params),
            ),
        );
    }
    out
}

/// A service endpoint's `tollgate:` block, errors reported at the offending value.
fn upstream_settings(
    def: &crate::config::gateway_file::ServiceEndpointDef,
    errors: &mut ConfigErrors,
) -> crate::upstream::settings::UpstreamSettings {
    use crate::upstream::settings::UpstreamSettings;
    let Some(node) = &def.tollgate else {
        return UpstreamSettings::default();
    };
    match serde_path_to_error::deserialize::<_, UpstreamSettings>(node.to_param_json()) {
        Ok(s) => match s.validate(def.urls.len()) {
            Ok(()) => s,
            Err(why) => {
                errors.push(
                    &node.pos,
                    format!("serviceEndpoint `{}` `tollgate`: {why}", def.name),
                );
                UpstreamSettings::default()
            }
        },
        Err(e) => {
            errors.push(
                &node.locate(e.path()).pos,
                format!(
                    "serviceEndpoint `{}` `tollgate.{}`: {}",
                    def.name,
                    e.path(),
                    e.inner()
                ),
            );
            UpstreamSettings::default()
        }
    }
}

fn check_declared_policies(gw: &GatewayFile, errors: &mut ConfigErrors) {
    for (name, pos) in &gw.policies {
        if !policies::AVAILABLE.contains(&name.as_str()) {
            errors.push(pos, policies::unknown_reason(name));
        }
    }
}

fn build_pipelines(
    gw: &GatewayFile,
    cx: &BuildContext<'_>,
    errors: &mut ConfigErrors,
) -> Vec<Pipeline> {
    let declared = |name: &str| gw.policies.iter().any(|(p, _)| p == name);
    let mut out = Vec::new();
    for def in &gw.pipelines {
        for (endpoint, pos) in &def.api_endpoints {
            if !gw.api_endpoints.iter().any(|e| &e.name == endpoint) {
                log::warn!(
                    "{pos}: pipeline `{}` lists apiEndpoint `{endpoint}`, which is not defined",
                    def.name
                );
            }
        }
        let mut steps = Vec::new();
        for step in &def.steps {
            if !declared(&step.policy) {
                errors.push(
                    &step.pos,
                    format!(
                        "policy `{}` is used in pipeline `{}` but not declared in `policies`",
                        step.policy, def.name
                    ),
                );
                continue;
            }
            if !policies::AVAILABLE.contains(&step.policy.as_str()) {
                continue; // reported once, where it is declared
            }
            let condition = step.condition.as_ref().and_then(|c| {
                let before = errors.0.len();
                let built = Condition::from_node(c, errors);
                built.filter(|_| errors.0.len() == before)
            });
            if step.condition.is_some() && condition.is_none() {
                continue;
            }
            if let Some(action) =
                policies::build(&step.policy, step.action.as_ref(), &step.pos, cx, errors)
            {
                steps.push(Step {
                    policy_name: Arc::from(step.policy.as_str()),
                    condition,
                    action,
                });
            }
        }
        out.push(Pipeline {
            name: Arc::from(def.name.as_str()),
            steps,
        });
    }
    out
}

fn build_router(gw: &GatewayFile, errors: &mut ConfigErrors) -> Router {
    // The last pipeline that lists an endpoint wins, as in EG.
    let mut pipeline_of: HashMap<&str, usize> = HashMap::new();
    for (i, p) in gw.pipelines.iter().enumerate() {
        for (endpoint, _) in &p.api_endpoints {
            pipeline_of.insert(endpoint.as_str(), i);
        }
    }
    // Host groups, in order of first appearance.
    let mut group_keys: Vec<(String, bool)> = Vec::new();
    // Each entry with its endpoint's index and its own in [`Gateway::endpoints`].
    let mut group_routes: Vec<Vec<(usize, usize, &crate::config::gateway_file::EndpointDef)>> =
        Vec::new();
    let entries = gw
        .api_endpoints
        .iter()
        .enumerate()
        .flat_map(|(ei, e)| e.entries.iter().map(move |entry| (ei, entry)))
        .enumerate();
    for (flat, (ei, entry)) in entries {
        let key = match &entry.host_regex {
            Some((re, _)) => (re.clone(), true),
            None => (
                entry
                    .host
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "*".into()),
                false,
            ),
        };
        let gi = match group_keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                group_keys.push(key);
                group_routes.push(Vec::new());
                group_keys.len() - 1
            }
        };
        group_routes[gi].push((ei, flat, entry));
    }
    let mut hosts = Vec::new();
    let mut routes = Vec::new();
    for (gi, (key, is_regex)) in group_keys.iter().enumerate() {
        let host = if *is_regex {
            match HostMatcher::regex(key) {
                Ok(h) => h,
                Err(why) => {
                    let pos = group_routes[gi]
                        .iter()
                        .find_map(|(_, _, e)| e.host_regex.as_ref().map(|(_, p)| p.clone()))
                        .unwrap_or_else(|| group_routes[gi][0].2.pos.clone());
                    errors.push(&pos, format!("bad regex in hostRegex: {why}"));
                    HostMatcher::Any
                }
            }
        } else {
            HostMatcher::glob(Some(key))
        };
        hosts.push(host);
        for (ei, flat, entry) in &group_routes[gi] {
            let endpoint = &gw.api_endpoints[*ei];
            let target = pipeline_of
                .get(endpoint.name.as_str())
                .map_or(Target::NoPipeline, |p| Target::Pipeline(*p));
            let methods = entry.methods.as_ref().map(|list| {
                list.iter()
                    .filter_map(|m| match Method::from_bytes(m.as_bytes()) {
                        Ok(m) => Some(m),
                        Err(_) => {
                            errors.push(
                                &entry.pos,
                                format!(
                                    "apiEndpoint `{}`: `{m}` is not an HTTP method",
                                    endpoint.name
                                ),
                            );
                            None
                        }
                    })
                    .collect::<Vec<_>>()
            });
            let mut matchers = Vec::new();
            if let Some((re, pos)) = &entry.path_regex {
                match PathMatcher::regex(re) {
                    Ok(m) => matchers.push(m),
                    Err(why) => errors.push(
                        pos,
                        format!(
                            "bad regex in pathRegex of apiEndpoint `{}`: {why}",
                            endpoint.name
                        ),
                    ),
                }
            } else if entry.paths.is_empty() {
                matchers.push(PathMatcher::any());
            } else {
                for (p, pos) in &entry.paths {
                    match PathMatcher::express(p) {
                        Ok(m) => matchers.push(m),
                        Err(why) => errors.push(
                            pos,
                            format!(
                                "bad path pattern `{p}` in apiEndpoint `{}`: {why}",
                                endpoint.name
                            ),
                        ),
                    }
                }
            }
            for path in matchers {
                routes.push(Route {
                    group: gi,
                    endpoint: *flat,
                    path,
                    methods: methods.clone(),
                    target,
                });
            }
        }
    }
    Router::new(hosts, routes)
}

/// Where a config's consumers carry credentials: the query parameters (`jwt`, `apiKey`, and
/// those its key-auth and jwt steps read) and the request headers (`Authorization`,
/// `Proxy-Authorization`, `Cookie`, and those its key-auth and jwt steps read). Kept out of
/// cache keys and the access log; a cache fill, made for every consumer, sends none of them.
fn secrets(gw: &GatewayFile) -> (Vec<String>, Vec<http::HeaderName>) {
    use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
    let mut params = vec!["jwt".to_string(), "apiKey".to_string()];
    let mut headers = vec![AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE];
    for step in gw.pipelines.iter().flat_map(|p| p.steps.iter()) {
        let field = |k: &str| {
            step.action
                .as_ref()
                .and_then(|a| a.get(k))
                .and_then(|n| n.as_str())
                .map(str::to_string)
        };
        let (param, header) = match step.policy.as_str() {
            "key-auth" => (field("apiKeyField"), field("apiKeyHeader")),
            "jwt" => match field("jwtExtractor").as_deref() {
                Some("query") => (field("jwtExtractorField"), None),
                Some("header") => (None, field("jwtExtractorField")),
                _ => (None, None),
            },
            _ => (None, None),
        };
        if let Some(p) = param.filter(|p| !params.contains(p)) {
            params.push(p);
        }
        // A name that is no header name is reported by its step.
        let header = header.and_then(|n| http::HeaderName::from_bytes(n.as_bytes()).ok());
        if let Some(h) = header.filter(|h| !headers.contains(h)) {
            headers.push(h);
        }
    }
    (params, headers)
}
