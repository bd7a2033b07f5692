//! `docker buildx build`'s flags that `kiln build` does not take (yet), and
//! the old builder's flags buildx itself accepts and ignores — so that a CI
//! job written for buildx fails only where kiln says why, never at clap's
//! "unexpected argument". Hidden from `--help`.

use anyhow::{Result, bail};
use clap::Args;

/// The flags; optional values need `=` (`--provenance=false`), so that none
/// takes the context argument for its value.
#[derive(Args, Default, Debug)]
pub(crate) struct BuildxFlags {
    #[arg(long, hide = true, value_name = "ATTEST")]
    attest: Vec<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    sbom: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    provenance: Option<String>,
    #[arg(long, hide = true)]
    builder: Option<String>,
    #[arg(long = "cgroup-parent", hide = true)]
    cgroup_parent: Option<String>,
    // The old builder's, ignored by buildx too.
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    compress: Option<String>,
    #[arg(long, hide = true)]
    isolation: Option<String>,
    #[arg(long = "security-opt", hide = true)]
    security_opt: Vec<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    squash: Option<String>,
    #[arg(short = 'm', long, hide = true)]
    memory: Option<String>,
    #[arg(long = "memory-swap", hide = true)]
    memory_swap: Option<String>,
    #[arg(short = 'c', long = "cpu-shares", hide = true)]
    cpu_shares: Option<String>,
    #[arg(long = "cpu-period", hide = true)]
    cpu_period: Option<String>,
    #[arg(long = "cpu-quota", hide = true)]
    cpu_quota: Option<String>,
    #[arg(long = "cpuset-cpus", hide = true)]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems", hide = true)]
    cpuset_mems: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    rm: Option<String>,
    #[arg(long = "force-rm", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    force_rm: Option<String>,
}

/// An attestation switched off (`--provenance=false`, `--sbom=0`): what
/// kiln does anyway, since it makes none.
fn off(value: &str) -> bool {
    matches!(value, "false" | "0" | "False" | "FALSE" | "disabled")
}

impl BuildxFlags {
    /// Fails, naming the flag and why, on one kiln does not take; the
    /// warnings for those it ignores, as buildx does, each once.
    pub(crate) fn check(&self) -> Result<Vec<String>> {
        let not_yet = |flag: &str, why: &str| -> Result<Vec<String>> {
            bail!("{flag} is not supported by kiln yet: {why}")
        };
        if !self.attest.is_empty() {
            return not_yet("--attest", "kiln makes no attestations (SBOM, provenance)");
        }
        for (flag, value) in [("--sbom", &self.sbom), ("--provenance", &self.provenance)] {
            if let Some(value) = value
                && !off(value)
            {
                return not_yet(
                    flag,
                    "kiln makes no attestations; only `=false` (none, kiln's way) is taken",
                );
            }
        }
        if self.builder.is_some() {
            return not_yet(
                "--builder",
                "kiln has no builder instances: it builds here, or on the kilnd of --addr",
            );
        }
        if self.cgroup_parent.is_some() {
            return not_yet(
                "--cgroup-parent",
                "kiln puts RUN steps in no cgroup of their own; they run in the cgroup of \
                 kiln (or kilnd), so start kiln or kilnd in the cgroup you want",
            );
        }
        Ok(self.ignored())
    }

    /// buildx's own warnings for the old builder's flags it ignores, and
    /// a line for each other one given (buildx ignores those silently).
    fn ignored(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.isolation.is_some() {
            warnings.push("isolation flag is deprecated with BuildKit.".to_owned());
        }
        if !self.security_opt.is_empty() {
            warnings.push(
                "security-opt flag is deprecated. \"RUN --security=insecure\" should be used with BuildKit."
                    .to_owned(),
            );
        }
        if self.squash.is_some() {
            warnings.push(
                "experimental flag squash is removed with BuildKit. You should squash inside build using a multi-stage Dockerfile for efficiency."
                    .to_owned(),
            );
        }
        let silent = [
            ("--compress", self.compress.is_some()),
            ("--memory", self.memory.is_some()),
            ("--memory-swap", self.memory_swap.is_some()),
            ("--cpu-shares", self.cpu_shares.is_some()),
            ("--cpu-period", self.cpu_period.is_some()),
            ("--cpu-quota", self.cpu_quota.is_some()),
            ("--cpuset-cpus", self.cpuset_cpus.is_some()),
            ("--cpuset-mems", self.cpuset_mems.is_some()),
            ("--rm", self.rm.is_some()),
            ("--force-rm", self.force_rm.is_some()),
        ];
        for (flag, given) in silent {
            if given {
                warnings.push(format!(
                    "{flag} is ignored, as docker buildx build ignores it (a flag of the old builder)"
                ));
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: BuildxFlags,
        context: String,
    }

    fn check(args: &[&str]) -> Result<Vec<String>> {
        let mut all = vec!["kiln"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().flags.check()
    }

    #[test]
    fn unsupported_flags_say_so_by_name() {
        for (args, flag) in [
            (&["--attest", "type=sbom", "."][..], "--attest"),
            (&["--sbom", "."], "--sbom"),
            (&["--provenance=mode=max", "."], "--provenance"),
            (&["--builder", "b", "."], "--builder"),
            (&["--cgroup-parent", "p", "."], "--cgroup-parent"),
        ] {
            let e = check(args).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{flag} is not supported by kiln yet: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn switched_off_attestations_and_old_flags_pass() {
        assert_eq!(
            check(&["--provenance=false", "--sbom=false", "."])
                .unwrap()
                .len(),
            0
        );
        let warnings = check(&["--rm", "--force-rm", "-m", "1g", "--squash", "."]).unwrap();
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("--memory is ignored"))
        );
        // `--rm` took no value: the context is still the context.
        let cli = Cli::try_parse_from(["kiln", "--rm", "ctx"]).unwrap();
        assert_eq!(cli.context, "ctx");
    }
}
