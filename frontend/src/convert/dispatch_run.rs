//! RUN → an exec op over the stage's filesystem.

use kiln_proto::ops::v1::{ExecOp, Meta, Mount, MountType, NetworkMode, Op, SecurityMode, op};

use super::dispatch_file::inline_file;
use super::mounts::input_index;
use super::state::{StageState, proxy_env};
use super::{ConvertErrorKind as Kind, Converter, Step, VertexMeta};
use crate::instructions::{Command, RunCommand};
use crate::parser::Heredoc;

/// Where a `RUN <<EOF` script with a `#!` line is mounted to be executed.
const HEREDOC_SCRIPT_DIR: &str = "/dev/pipes";

impl Converter<'_> {
    pub(super) fn dispatch_run(
        &mut self,
        state: &mut StageState,
        command: &Command,
        run: &RunCommand,
    ) -> Result<Step, Kind> {
        let mut inputs = Vec::new();
        let rootfs = match &state.root {
            Some(root) => input_index(&mut inputs, root.clone()),
            None => -1,
        };
        let mut mounts = run
            .mounts
            .iter()
            .map(|spec| self.mount(state, spec, &mut inputs))
            .collect::<Result<Vec<_>, _>>()?;

        let mut cmd = run.command.clone();
        if cmd.prepend_shell && !cmd.files.is_empty() {
            cmd.args = self.heredoc_script(
                state,
                command,
                &cmd.args,
                &cmd.files,
                &mut inputs,
                &mut mounts,
            );
        }
        let args = self.command_line(state, &cmd);

        let proxy_env = proxy_env(&self.build_args);
        let network = match run.network.as_deref() {
            Some("none") => NetworkMode::None,
            Some("host") => NetworkMode::Host,
            _ => NetworkMode::Default,
        };
        let security = match run.security.as_deref() {
            Some("insecure") => SecurityMode::Insecure,
            _ => SecurityMode::Sandbox,
        };
        let mut env = state.run_env();
        // As BuildKit's LLB: the first SSH mount is the step's agent unless
        // the step names its own.
        if let Some(ssh) = mounts.iter().find(|m| m.r#type == MountType::Ssh as i32)
            && !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK="))
        {
            env.push(format!("SSH_AUTH_SOCK={}", ssh.target));
        }
        let mut meta = Meta {
            args: args.clone(),
            env,
            cwd: state.workdir().to_owned(),
            user: state.image.config.user.clone().unwrap_or_default(),
            ..Meta::default()
        };
        self.sandbox.fill_meta(&mut meta);
        let exec = ExecOp {
            meta: Some(meta),
            rootfs,
            mounts,
            network: network as i32,
            security: security as i32,
            proxy_env,
        };
        let op = Op {
            inputs,
            kind: Some(op::Kind::Exec(exec)),
            platform: Some(state.image.platform.clone()),
        };
        state.root = Some(self.graph.add(op, Self::meta(state, command)));
        Ok(Step::Layer(format!("RUN {}", args.join(" "))))
    }

    /// The command for a RUN with heredocs, as BuildKit runs it: a lone
    /// `<<EOF` is the script itself (executed from a read-only mount when
    /// it starts with `#!`); otherwise the shell gets the text with the
    /// heredoc bodies appended and handles them itself.
    fn heredoc_script(
        &mut self,
        state: &StageState,
        command: &Command,
        args: &[String],
        files: &[Heredoc],
        inputs: &mut Vec<String>,
        mounts: &mut Vec<Mount>,
    ) -> Vec<String> {
        let lone = match args {
            [only] => Heredoc::parse_word(only).ok().flatten(),
            _ => None,
        };
        let Some(_) = lone else {
            let mut full = args.join(" ");
            for file in files {
                full.push('\n');
                full.push_str(&file.content);
                full.push_str(&file.name);
            }
            return vec![full];
        };
        let script = &files[0];
        let body = script.body();
        if !body.starts_with("#!") {
            return vec![body];
        }
        let op = inline_file(&script.name, 0o755, body.into_bytes());
        let meta = VertexMeta {
            description: format!("{} (script)", Self::meta(state, command).description),
            ..Self::meta(state, command)
        };
        let digest = self.graph.add(op, meta);
        mounts.push(Mount {
            r#type: MountType::Bind as i32,
            target: HEREDOC_SCRIPT_DIR.to_owned(),
            input: input_index(inputs, digest),
            source: "/".to_owned(),
            readonly: true,
            ..Mount::default()
        });
        vec![format!("{HEREDOC_SCRIPT_DIR}/{}", script.name)]
    }
}
