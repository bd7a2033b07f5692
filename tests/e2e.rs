//! End-to-end tests: they drive the real `kiln` binary as a user would.
//!
//! Built as an integration test of `kiln-builder` (see its Cargo.toml) so
//! that cargo builds the binaries first and says where they are.

mod build;
mod build_contexts;
mod busybox;
mod cache_backends;
mod cache_mounts;
mod checks;
mod ci_client;
mod ci_parity;
mod copy_meta;
mod debug;
mod deploy;
mod differential;
mod digests;
mod docker;
mod empty_steps;
mod emulation;
mod estargz;
mod everyday;
mod farm;
mod farm_drain;
mod git_query;
mod harness;
mod hostile_bounds;
mod hostile_depth;
mod hostile_dockerignore;
mod hostile_entitlements;
mod hostile_git;
mod hostile_kilnd;
mod hostile_layers;
mod hostile_network;
mod hostile_sandbox;
mod hostile_store;
mod httpd;
mod images;
mod instructions;
mod kilnd;
mod kilnd_tls;
mod media_types;
mod mounts_rw;
mod multi_platform;
mod noise;
mod parity;
mod platforms;
mod proxy_args;
mod registry;
mod registry_token;
mod remote_context;
mod sandbox_flags;
mod ssh;
