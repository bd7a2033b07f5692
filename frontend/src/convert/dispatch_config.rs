//! Instructions that change only the image config (ENV, LABEL, CMD,
//! ENTRYPOINT, EXPOSE, USER, VOLUME, STOPSIGNAL, SHELL, HEALTHCHECK,
//! ONBUILD, MAINTAINER) and ARG, which changes only the stage's scope.

use super::image::{Empty, HealthConfig};
use super::state::StageState;
use super::{ConvertErrorKind as Kind, Converter, Step, expand};
use crate::instructions::{ArgDecl, CommandKind, Healthcheck, KeyValue, ShellCommand};

impl Converter<'_> {
    /// The instructions that only change the image config; the ones with
    /// more to them than setting a field have a function of their own.
    pub(super) fn dispatch_config(
        &mut self,
        state: &mut StageState,
        command: &CommandKind,
    ) -> Result<Step, Kind> {
        match command {
            CommandKind::Env(pairs) => {
                // Every pair sees the environment from before the instruction.
                let pairs = expand_pairs(self, state, pairs)?;
                for (key, value) in pairs {
                    state.set_env(&key, &value);
                }
            }
            CommandKind::Label(pairs) => {
                let pairs = expand_pairs(self, state, pairs)?;
                state.set_labels(pairs);
            }
            CommandKind::Cmd(cmd) => {
                state.image.config.cmd = Some(self.command_line(state, cmd));
                state.cmd_set = true;
            }
            CommandKind::Entrypoint(cmd) => self.entrypoint(state, cmd),
            CommandKind::Expose(ports) => self.expose(state, ports)?,
            CommandKind::User(user) => {
                state.image.config.user = Some(expand(&self.lexer, user, state)?);
            }
            CommandKind::Volume(volumes) => self.volume(state, volumes)?,
            CommandKind::StopSignal(signal) => self.stop_signal(state, signal)?,
            CommandKind::Shell(shell) => state.image.config.shell = Some(shell.clone()),
            CommandKind::Healthcheck(h) => {
                state.image.config.healthcheck = Some(health_config(h));
            }
            CommandKind::Onbuild(trigger) => {
                state
                    .image
                    .config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(trigger.clone());
                // As BuildKit's dispatchOnbuild: no history entry.
                return Ok(Step::Unrecorded);
            }
            CommandKind::Maintainer(author) => state.image.author = Some(author.clone()),
            CommandKind::Run(_)
            | CommandKind::Copy(_)
            | CommandKind::Add(_)
            | CommandKind::Workdir(_)
            | CommandKind::Arg(_) => {
                unreachable!("dispatched by their own functions")
            }
        }
        Ok(Step::Config)
    }

    /// ENTRYPOINT: an empty one (`ENTRYPOINT []`) clears it.
    fn entrypoint(&self, state: &mut StageState, cmd: &ShellCommand) {
        let line = self.command_line(state, cmd);
        state.image.config.entrypoint = (!line.is_empty()).then_some(line);
        // An ENTRYPOINT drops a CMD inherited from the base.
        if !state.cmd_set {
            state.image.config.cmd = None;
        }
    }

    /// EXPOSE: each argument expanded and split into words, each word a
    /// port or range (see [`parse_ports`]); added to the image's ports.
    fn expose(&self, state: &mut StageState, ports: &[String]) -> Result<(), Kind> {
        let mut exposed = Vec::new();
        for port in ports {
            let words = self
                .lexer
                .expand_words(port, state)
                .map_err(|source| Kind::Expand {
                    word: port.clone(),
                    source,
                })?;
            for word in words {
                exposed.extend(parse_ports(&word)?);
            }
        }
        let all = state
            .image
            .config
            .exposed_ports
            .get_or_insert_with(Default::default);
        all.extend(exposed.into_iter().map(|p| (p, Empty {})));
        Ok(())
    }

    /// VOLUME: the expanded paths, none of them blank, added to the
    /// image's volumes.
    fn volume(&self, state: &mut StageState, volumes: &[String]) -> Result<(), Kind> {
        let volumes = volumes
            .iter()
            .map(|v| expand(&self.lexer, v, state))
            .collect::<Result<Vec<_>, _>>()?;
        if volumes.iter().any(|v| v.trim().is_empty()) {
            return Err(crate::instructions::InstructionErrorKind::EmptyVolume.into());
        }
        let all = state
            .image
            .config
            .volumes
            .get_or_insert_with(Default::default);
        all.extend(volumes.into_iter().map(|v| (v, Empty {})));
        Ok(())
    }

    /// STOPSIGNAL: the expanded signal, if it is one (see [`valid_signal`]).
    fn stop_signal(&self, state: &mut StageState, signal: &str) -> Result<(), Kind> {
        let signal = expand(&self.lexer, signal, state)?;
        if !valid_signal(&signal) {
            return Err(Kind::Signal(signal));
        }
        state.image.config.stop_signal = Some(signal);
        Ok(())
    }

    /// ARG: a build arg overrides the default; a bare ARG takes the global
    /// ARG (or predefined arg) of the same name.
    pub(super) fn dispatch_arg(
        &mut self,
        state: &mut StageState,
        decls: &[ArgDecl],
    ) -> Result<Step, Kind> {
        for decl in decls {
            self.declared.insert(decl.name.clone());
            let value = match (self.build_args.get(&decl.name), &decl.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => Some(expand(&self.lexer, default, state)?),
                (None, None) => self.globals.get(&decl.name).cloned().flatten(),
            };
            state.push_arg(decl.name.clone(), value);
        }
        Ok(Step::Config)
    }

    /// CMD/ENTRYPOINT/RUN argv: exec form as is, shell form through the
    /// stage's SHELL.
    pub(super) fn command_line(&self, state: &StageState, cmd: &ShellCommand) -> Vec<String> {
        if !cmd.prepend_shell {
            return cmd.args.clone();
        }
        let mut line = state
            .image
            .config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
        line.extend(cmd.args.iter().cloned());
        line
    }
}

/// HEALTHCHECK's settings as the image config holds them.
fn health_config(h: &Healthcheck) -> HealthConfig {
    HealthConfig {
        test: h.test.clone(),
        interval: h.interval,
        timeout: h.timeout,
        start_period: h.start_period,
        start_interval: h.start_interval,
        retries: h.retries,
    }
}

fn expand_pairs(
    converter: &Converter<'_>,
    state: &StageState,
    pairs: &[KeyValue],
) -> Result<Vec<(String, String)>, Kind> {
    pairs
        .iter()
        .map(|kv| {
            Ok((
                expand(&converter.lexer, &kv.key, state)?,
                expand(&converter.lexer, &kv.value, state)?,
            ))
        })
        .collect()
}

/// `80`, `80/udp`, `8000-8002/tcp` → `80/tcp`, … (one entry per port).
/// An address and host port before the port (`127.0.0.1:8080:80`) are
/// dropped, as BuildKit does (the `ExposeInvalidFormat` check warns).
fn parse_ports(spec: &str) -> Result<Vec<String>, Kind> {
    let bad = || Kind::Port(spec.to_owned());
    let container = match spec.rsplit_once(':') {
        Some((mapping, container)) => {
            let host = mapping.rsplit(':').next().unwrap_or_default();
            let digits = |s: &str| s.parse::<u16>().is_ok();
            let host_ok = host.is_empty()
                || host
                    .split_once('-')
                    .map_or(digits(host), |(a, b)| digits(a) && digits(b));
            if !host_ok {
                return Err(bad());
            }
            container
        }
        None => spec,
    };
    let (range, proto) = match container.split_once('/') {
        Some((range, proto)) => (range, proto.to_ascii_lowercase()),
        None => (container, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    let port = |s: &str| s.parse::<u16>().map_err(|_| bad());
    let (start, end) = match range.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(range)?, port(range)?),
    };
    if end < start {
        return Err(bad());
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// A signal name (with or without `SIG`), `RTMIN+n`, or a number.
fn valid_signal(signal: &str) -> bool {
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX",
    ];
    if let Ok(n) = signal.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let upper = signal.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let base = name.split(['+', '-']).next().unwrap_or(name);
    NAMES.contains(&base) && (base == name || base.starts_with("RT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_ports("80").unwrap(), ["80/tcp"]);
        assert_eq!(parse_ports("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(
            parse_ports("8000-8002").unwrap(),
            ["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert_eq!(parse_ports("127.0.0.1:8080:80").unwrap(), ["80/tcp"]);
        assert_eq!(parse_ports("[::1]:53:53/udp").unwrap(), ["53/udp"]);
        assert_eq!(parse_ports("5000:5000").unwrap(), ["5000/tcp"]);
        for bad in ["x", "80/icmp", "70000", "9-8", "", "a:80", "1.2.3.4:x:80"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signals() {
        for good in ["SIGTERM", "term", "9", "SIGRTMIN+3"] {
            assert!(valid_signal(good), "{good}");
        }
        for bad in ["SIGFOO", "0", "TERM+1", ""] {
            assert!(!valid_signal(bad), "{bad}");
        }
    }
}
