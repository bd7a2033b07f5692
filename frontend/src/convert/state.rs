//! The state of one stage while its instructions are dispatched: its
//! filesystem so far, its image config, and the ARGs in scope.

use std::collections::{HashMap, HashSet};

use kiln_proto::ops::v1::Platform;
use serde::Serialize;

use super::ConvertOptions;
use super::image::{History, ImageConfig};
use crate::instructions::Stage;
use crate::platform;
use crate::shell::{Vars, env_key};

/// Docker's default PATH for Linux images that set none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The image a stage makes, besides its filesystem.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageImage {
    pub platform: Platform,
    pub config: ImageConfig,
    /// One entry per instruction since the base image's.
    pub history: Vec<History>,
    /// MAINTAINER.
    pub author: Option<String>,
    /// The base image reference (pinned when known); `None` for scratch.
    pub base: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct StageState {
    pub(super) index: usize,
    /// Name for progress: the stage name or `stage-N`.
    pub(super) name: String,
    /// Current filesystem; `None` is empty.
    pub(super) root: Option<String>,
    pub(super) image: StageImage,
    /// ARGs declared in this stage, in order, with their values.
    args: Vec<(String, Option<String>)>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    pub(super) cmd_set: bool,
    /// [`Self::run_env`] as last computed; cleared by every change to Env
    /// or the ARGs.
    run_env: Option<Vec<String>>,
    /// Step number of the instruction being dispatched, and the count.
    pub(super) step: usize,
    pub(super) total: usize,
    /// Bytes of the Env entries, ARGs and labels held (kept as they change,
    /// so that bounding them costs nothing per instruction).
    vars: usize,
}

impl StageState {
    pub(super) fn new(
        index: usize,
        stage: &Stage,
        total: usize,
        platform: Platform,
        config: ImageConfig,
    ) -> Self {
        let vars = config.env.iter().flatten().map(String::len).sum::<usize>()
            + config
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        Self {
            vars,
            index,
            name: stage.display_name(),
            root: None,
            image: StageImage {
                platform,
                config,
                history: Vec::new(),
                author: None,
                base: None,
            },
            args: Vec::new(),
            cmd_set: false,
            run_env: None,
            step: 1,
            total,
        }
    }

    /// A stage whose FROM names an earlier stage: it starts where that one
    /// ended (filesystem, config, history) with its ARGs in scope, as
    /// BuildKit's `dispatchState.init`.
    pub(super) fn from_stage(base: &StageState, index: usize, stage: &Stage, total: usize) -> Self {
        Self {
            root: base.root.clone(),
            image: base.image.clone(),
            args: base.args.clone(),
            vars: base.vars,
            ..Self::new(
                index,
                stage,
                total,
                base.image.platform.clone(),
                ImageConfig::default(),
            )
        }
    }

    pub(super) fn ensure_default_path(&mut self) {
        if self.image.config.env_var("PATH").is_none() {
            self.set_env("PATH", DEFAULT_PATH);
        }
    }

    /// Sets an Env variable of the image.
    pub(super) fn set_env(&mut self, name: &str, value: &str) {
        self.run_env = None;
        let old = self
            .image
            .config
            .env_var(name)
            .map_or(0, |v| name.len() + 1 + v.len());
        self.vars = self.vars - old.min(self.vars) + name.len() + 1 + value.len();
        self.image.config.set_env(name, value);
    }

    /// Sets image labels.
    pub(super) fn set_labels(&mut self, pairs: Vec<(String, String)>) {
        let labels = self
            .image
            .config
            .labels
            .get_or_insert_with(Default::default);
        for (key, value) in pairs {
            let added = key.len() + value.len();
            let old = labels.get(&key).map_or(0, |v| key.len() + v.len());
            labels.insert(key, value);
            self.vars = self.vars - old.min(self.vars) + added;
        }
    }

    /// Bytes of the Env entries, ARGs and labels this stage holds.
    pub(super) fn vars_bytes(&self) -> usize {
        self.vars
    }

    /// Declares an ARG (and its value) in this stage.
    pub(super) fn push_arg(&mut self, name: String, value: Option<String>) {
        self.run_env = None;
        self.vars += name.len() + value.as_ref().map_or(0, String::len);
        self.args.push((name, value));
    }

    /// The working directory (absolute), `/` when unset.
    pub(super) fn workdir(&self) -> &str {
        self.image
            .config
            .working_dir
            .as_deref()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
    }

    /// RUN's environment: the image's Env, then ARG values that no ENV
    /// overrides (a redeclared ARG keeps its first place, last value).
    pub(super) fn run_env(&mut self) -> Vec<String> {
        if let Some(env) = &self.run_env {
            return env.clone();
        }
        let env = self.compute_run_env();
        self.run_env = Some(env.clone());
        env
    }

    fn compute_run_env(&self) -> Vec<String> {
        let mut env = self.image.config.env.clone().unwrap_or_default();
        if self.args.is_empty() {
            return env;
        }
        let image_keys: HashSet<&str> = env.iter().map(|kv| env_key(kv)).collect();
        let mut placed: HashMap<&str, usize> = HashMap::new();
        let mut extra = Vec::new();
        for (name, value) in &self.args {
            let Some(value) = value else { continue };
            if image_keys.contains(name.as_str()) {
                continue;
            }
            let entry = format!("{name}={value}");
            match placed.get(name.as_str()) {
                Some(&i) => extra[i] = entry,
                None => {
                    placed.insert(name, extra.len());
                    extra.push(entry);
                }
            }
        }
        env.extend(extra);
        env
    }
}

/// Expansion sees ENV first (ENV overrides an ARG of the same name), then
/// the stage's ARGs.
impl Vars for StageState {
    fn var(&self, name: &str) -> Option<&str> {
        self.image
            .config
            .env_var(name)
            .or_else(|| self.arg_value(name))
    }
}

impl StageState {
    /// The value of the stage's ARG `name`, when declared with one.
    fn arg_value(&self, name: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// The variables of a `--from` / `from=` value: the stage's build
/// arguments only. kiln expands those there (BuildKit expands nothing,
/// moby/buildkit#2412); an ENV name is remembered so that it can be
/// refused, as BuildKit refuses any variable.
pub(super) struct FromVars<'s> {
    state: &'s StageState,
    env: std::cell::RefCell<Option<String>>,
}

impl<'s> FromVars<'s> {
    pub(super) fn new(state: &'s StageState) -> Self {
        Self {
            state,
            env: std::cell::RefCell::new(None),
        }
    }

    /// The first ENV variable the value named, if any.
    pub(super) fn env_name(&self) -> Option<String> {
        self.env.borrow().clone()
    }
}

impl Vars for FromVars<'_> {
    fn var(&self, name: &str) -> Option<&str> {
        if self.state.image.config.env_var(name).is_some() {
            self.env.borrow_mut().get_or_insert_with(|| name.to_owned());
            return None;
        }
        self.state.arg_value(name)
    }
}

/// Proxy variables: passed to RUN from build args without an ARG, and kept
/// out of cache keys.
const PROXY_KINDS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "no_proxy",
    "all_proxy",
];

/// The proxy variables a RUN step gets, as BuildKit's: each kind given as a
/// build arg in any spelling (`http_proxy`, `HTTP_PROXY`, …; of several,
/// the last in sorted order) is set in both the upper and lower case
/// spellings, whether or not the Dockerfile declares it. They are in no
/// cache key, image or history.
pub(super) fn proxy_env(build_args: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut values = [None; PROXY_KINDS.len()];
    for (name, value) in build_args {
        if let Some(i) = PROXY_KINDS
            .iter()
            .position(|k| name.eq_ignore_ascii_case(k))
        {
            values[i] = Some(value);
        }
    }
    PROXY_KINDS
        .iter()
        .zip(values)
        .filter_map(|(kind, value)| value.filter(|v| !v.is_empty()).map(|v| (kind, v)))
        .flat_map(|(kind, v)| {
            [
                format!("{}={v}", kind.to_ascii_uppercase()),
                format!("{kind}={v}"),
            ]
        })
        .collect()
}

fn is_proxy(name: &str) -> bool {
    PROXY_KINDS.iter().any(|k| name.eq_ignore_ascii_case(k))
}

/// Build args the builder defines (usable in FROM, or in a stage after a
/// bare `ARG NAME`).
pub(super) fn predefined_args(options: &ConvertOptions<'_>) -> Vec<(String, String)> {
    let mut args = Vec::new();
    for (prefix, p) in [
        ("BUILD", &options.build_platform),
        ("TARGET", &options.target_platform),
    ] {
        args.push((format!("{prefix}PLATFORM"), platform::format(p)));
        args.push((format!("{prefix}OS"), p.os.clone()));
        args.push((format!("{prefix}ARCH"), p.architecture.clone()));
        args.push((format!("{prefix}VARIANT"), p.variant.clone()));
    }
    args
}

/// Names the builder knows without an ARG (never reported as unused).
pub(super) fn is_predefined(name: &str) -> bool {
    is_proxy(name)
        || name.starts_with("BUILDKIT_")
        || name == "SOURCE_DATE_EPOCH"
        || ["BUILD", "TARGET"].iter().any(|p| {
            name.strip_prefix(p)
                .is_some_and(|rest| ["PLATFORM", "OS", "ARCH", "VARIANT"].contains(&rest))
        })
}
