//! kiln's solver and build pipeline: from a build request to an image in
//! the store.
//!
//! Owns: the build request and the one function that runs it for the CLI
//! and kilnd alike ([`pipeline`]: resolve, cache import, solve, image,
//! cache export, outputs, push), the build context on the client side
//! ([`context`]: the Dockerfile and `.dockerignore` lookup, a context named
//! by URL), remote sources ([`fetch`]), the solver ([`solve`]: the step
//! cache, cache keys, RUN steps offered to a [`solve::Executor`]: kilnd's
//! farm, then this machine's worker, [`solve::Local`]), building an image ([`build`]: conversion,
//! checks, solve, config, tags) and who may run privileged or host-network
//! steps ([`entitlements`]).
//!
//! Does not own: Dockerfile semantics (`kiln-frontend`), running ops
//! (`kiln-worker`), the image model (`kiln-image`), registries
//! (`kiln-registry`), the farm's placement and wire protocol or kilnd's API
//! (`kiln-daemon`).

pub mod build;
pub mod context;
pub mod entitlements;
pub mod fetch;
pub mod pipeline;
pub mod solve;
