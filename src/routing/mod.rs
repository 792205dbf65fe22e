//! Which route a request takes, with EG's semantics and order, compiled once per config.
//!
//! EG groups apiEndpoint entries by host key (`hostRegex`, else `host`, else `*`), groups in
//! the order they first appear, and inside a group mounts every path of every entry in
//! declaration order (one route per path, per method when methods are listed). A request tries
//! the routes in that order; a pipeline that ends without responding falls through to the next
//! route that matches.

pub mod host;
mod index;
pub mod path;

use http::Method;

use index::RouteIndex;

pub use host::HostMatcher;
pub use path::PathMatcher;

/// What a matched route leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Index into the gateway's pipelines.
    Pipeline(usize),
    /// The endpoint is used by no pipeline: EG answers 404 `Not Found`.
    NoPipeline,
}

#[derive(Debug)]
pub struct Route {
    /// Index of the host group this route belongs to.
    pub group: usize,
    /// Index into the gateway's apiEndpoints, one per entry of each.
    pub endpoint: usize,
    pub path: PathMatcher,
    /// `None`: every method.
    pub methods: Option<Vec<Method>>,
    pub target: Target,
}

impl Route {
    fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(list) => list
                .iter()
                .any(|m| m == method || (*method == Method::HEAD && *m == Method::GET)),
        }
    }
}

/// The routing table: host groups and their routes, in EG's order, indexed.
#[derive(Debug)]
pub struct Router {
    hosts: Vec<HostMatcher>,
    routes: Vec<Route>,
    index: RouteIndex,
}

impl Router {
    /// `routes` in EG's order, each naming its group in `hosts`.
    pub fn new(hosts: Vec<HostMatcher>, routes: Vec<Route>) -> Router {
        let exact: Vec<Option<String>> = hosts.iter().map(HostMatcher::exact_name).collect();
        let index = RouteIndex::build(routes.iter().map(|r| index::Entry {
            exact_host: exact[r.group].clone(),
            prefix: r.path.literal_start(),
        }));
        Router {
            hosts,
            routes,
            index,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route at or after `from` that matches. Allocates nothing.
    pub fn find(
        &self,
        from: usize,
        host: Option<&str>,
        path: &str,
        method: &Method,
    ) -> Option<usize> {
        let mut group_checked = usize::MAX;
        let mut group_ok = false;
        let mut check = |i: usize| {
            let route = &self.routes[i];
            if route.group != group_checked {
                group_checked = route.group;
                group_ok = self.hosts[route.group].matches(host);
            }
            group_ok && route.allows(method) && route.path.matches(path)
        };
        match self.index.candidates(from, host, path) {
            Some(mut candidates) => candidates.find(|i| check(*i)),
            None => (from..self.routes.len()).find(|i| check(*i)),
        }
    }

    /// `find` without the index: every route in order (the reference the index is tested on).
    pub fn find_by_scan(
        &self,
        from: usize,
        host: Option<&str>,
        path: &str,
        method: &Method,
    ) -> Option<usize> {
        (from..self.routes.len()).find(|&i| {
            let route = &self.routes[i];
            self.hosts[route.group].matches(host)
                && route.allows(method)
                && route.path.matches(path)
        })
    }
}
