//! Placement, retries and refusals of [`Farm`], with the test standing in
//! for the workers at the other end of their channels.

use std::sync::Arc;

use kiln_proto::farm::v1 as pb;
use tokio::sync::mpsc;

use super::*;

type FromFarm = mpsc::Receiver<Result<pb::FarmMessage, Status>>;

fn hello(id: &str, layers: &[&str]) -> pb::Hello {
    pb::Hello {
        id: id.into(),
        platform: "linux/amd64".into(),
        parallelism: 1,
        layers: layers.iter().map(|l| (*l).to_owned()).collect(),
        token: String::new(),
        emulated: Vec::new(),
    }
}

fn attach(farm: &Farm, hello: &pb::Hello) -> (u64, FromFarm) {
    let (tx, rx) = mpsc::channel(8);
    (farm.attach(hello, tx).unwrap(), rx)
}

/// The step a worker was sent.
fn received(rx: &mut FromFarm) -> pb::RunStep {
    match rx.blocking_recv() {
        Some(Ok(pb::FarmMessage {
            message: Some(pb::farm_message::Message::Run(step)),
        })) => step,
        other => panic!("expected a step, got {other:?}"),
    }
}

fn done(step: u64) -> pb::WorkerMessage {
    pb::WorkerMessage {
        message: Some(pb::worker_message::Message::Done(pb::StepDone {
            step,
            exit_code: 7,
            ..Default::default()
        })),
    }
}

/// Runs a step on another thread; its result comes back on the handle.
fn run(
    farm: &Arc<Farm>,
    layers: StepLayers,
) -> std::thread::JoinHandle<Result<Option<FarmOutcome>, FarmError>> {
    let farm = Arc::clone(farm);
    std::thread::spawn(move || {
        farm.place_and_run(
            pb::RunStep::default(),
            "linux/amd64",
            &layers,
            &mut |_| {},
            &|| false,
        )
    })
}

#[test]
fn no_worker_of_the_platform_means_the_step_runs_here() {
    let farm = Farm::new(None);
    assert!(run(&farm, Vec::new()).join().unwrap().unwrap().is_none());
    let mut other = hello("arm", &[]);
    other.platform = "linux/arm64".into();
    let _attached = attach(&farm, &other);
    assert!(run(&farm, Vec::new()).join().unwrap().unwrap().is_none());
}

/// Runs a step of `platform` on another thread.
fn run_for(
    farm: &Arc<Farm>,
    platform: &'static str,
) -> std::thread::JoinHandle<Result<Option<FarmOutcome>, FarmError>> {
    let farm = Arc::clone(farm);
    std::thread::spawn(move || {
        farm.place_and_run(pb::RunStep::default(), platform, &[], &mut |_| {}, &|| {
            false
        })
    })
}

#[test]
fn a_foreign_step_goes_to_a_native_worker_and_only_else_to_one_that_emulates() {
    let farm = Farm::new(None);
    let mut emulates = hello("emulates", &[]);
    emulates.emulated = vec!["linux/arm64".into(), "linux/riscv64".into()];
    let (s1, mut rx1) = attach(&farm, &emulates);
    // No arm64 worker: the one that emulates it takes the step.
    let step = run_for(&farm, "linux/arm64");
    let sent = received(&mut rx1);
    farm.deliver("emulates", s1, done(sent.step));
    assert_eq!(step.join().unwrap().unwrap().unwrap().exit_code, 7);
    // Nobody runs s390x: the step runs here.
    assert!(
        run_for(&farm, "linux/s390x")
            .join()
            .unwrap()
            .unwrap()
            .is_none()
    );

    // A native arm64 worker attached: it takes arm64 steps, even busy.
    let mut native = hello("native", &[]);
    native.platform = "linux/arm64".into();
    let (s2, mut rx2) = attach(&farm, &native);
    let first = run_for(&farm, "linux/arm64");
    let sent = received(&mut rx2);
    let second = run_for(&farm, "linux/arm64");
    farm.deliver("native", s2, done(sent.step));
    assert!(first.join().unwrap().unwrap().is_some());
    let sent = received(&mut rx2);
    farm.deliver("native", s2, done(sent.step));
    assert!(second.join().unwrap().unwrap().is_some());
    let info = farm.workers();
    let steps = |id: &str| info.iter().find(|w| w.id == id).unwrap().steps_run;
    assert_eq!((steps("emulates"), steps("native")), (1, 2));
    assert_eq!(info[0].emulated, ["linux/arm64", "linux/riscv64"]);
}

#[test]
fn a_step_goes_where_its_layers_are() {
    let farm = Farm::new(None);
    let (s1, _rx1) = attach(&farm, &hello("w1", &["small"]));
    let (s2, mut rx2) = attach(&farm, &hello("w2", &["big"]));
    let _ = s1;
    let step = run(&farm, vec![("small".into(), 10), ("big".into(), 1000)]);
    let sent = received(&mut rx2);
    farm.deliver("w2", s2, done(sent.step));
    let outcome = step.join().unwrap().unwrap().unwrap();
    assert_eq!(outcome.exit_code, 7);
    assert_eq!(farm.workers()[1].steps_run, 1);
}

#[test]
fn a_small_base_is_fetched_rather_than_wait_behind_a_running_step() {
    let farm = Farm::new(None);
    let mut two = hello("w1", &["base"]);
    two.parallelism = 2;
    let (_, mut rx1) = attach(&farm, &two);
    let (s2, mut rx2) = attach(&farm, &hello("w2", &[]));
    let small = vec![("base".to_owned(), 1 << 20)];
    let _first = run(&farm, small.clone());
    received(&mut rx1);
    // w1 has a free slot and the base, but is busy: idle w2 fetches 1 MiB.
    let second = run(&farm, small);
    let on_w2 = received(&mut rx2);
    farm.deliver("w2", s2, done(on_w2.step));
    assert!(second.join().unwrap().unwrap().is_some());
    // A large base is worth waiting for a slot on the worker that holds it.
    let large = vec![("base".to_owned(), 1 << 30)];
    let third = run(&farm, large);
    received(&mut rx1);
    farm.close();
    assert!(
        third.join().unwrap().unwrap().is_none(),
        "closed: runs here"
    );
}

#[test]
fn a_busy_worker_is_passed_over_and_a_lost_step_runs_elsewhere() {
    let farm = Farm::new(None);
    let (s1, mut rx1) = attach(&farm, &hello("w1", &["l"]));
    let first = run(&farm, vec![("l".into(), 1)]);
    let on_w1 = received(&mut rx1);
    // w1 (parallelism 1) is busy: a second worker takes the next step.
    let (s2, mut rx2) = attach(&farm, &hello("w2", &[]));
    let second = run(&farm, vec![("l".into(), 1)]);
    let on_w2 = received(&mut rx2);
    farm.deliver("w2", s2, done(on_w2.step));
    assert!(second.join().unwrap().unwrap().is_some());
    // w1 goes away mid-step: its step is sent to w2.
    farm.detach("w1", s1);
    let retried = received(&mut rx2);
    assert_ne!(retried.step, on_w1.step, "a new number for the new attempt");
    farm.deliver("w2", s2, done(retried.step));
    assert_eq!(first.join().unwrap().unwrap().unwrap().exit_code, 7);
    assert_eq!(farm.workers().len(), 1);
}

#[test]
fn refusals() {
    let farm = Farm::new(Some("t0ken".into()));
    let (tx, _rx) = mpsc::channel(1);
    assert!(matches!(
        farm.attach(&hello("w1", &[]), tx.clone()),
        Err(AttachRefused::Token)
    ));
    let mut with_token = hello("w1", &[]);
    with_token.token = "t0ken".into();
    farm.attach(&with_token, tx.clone()).unwrap();
    assert!(matches!(
        farm.attach(&with_token, tx.clone()),
        Err(AttachRefused::Taken(_))
    ));
    farm.close();
    let mut other = with_token.clone();
    other.id = "w2".into();
    assert!(matches!(
        farm.attach(&other, tx),
        Err(AttachRefused::Closed)
    ));
    assert!(farm.workers().is_empty());
}

#[test]
fn a_workers_emulated_platforms_are_checked_and_bounded() {
    let farm = Farm::new(None);
    let mut said = hello("w", &[]);
    let long = "a".repeat(10_000);
    said.emulated = vec![
        "linux/aarch64".into(),
        "linux/arm64".into(),
        "../../etc".into(),
        long,
        "linux/arm/v7".into(),
    ];
    said.emulated
        .extend((0..100).map(|i| format!("linux/arch{i}")));
    let _attached = attach(&farm, &said);
    let emulated = &farm.workers()[0].emulated;
    // Normalized (aarch64 is arm64, once), the rest dropped, at most 64.
    assert_eq!(emulated[..2], ["linux/arm64", "linux/arm/v7"]);
    assert_eq!(emulated.len(), MAX_EMULATED);
    assert!(emulated.iter().all(|p| p.len() < 32), "{emulated:?}");
}

fn draining() -> pb::WorkerMessage {
    pb::WorkerMessage {
        message: Some(pb::worker_message::Message::Draining(pb::Draining {})),
    }
}

/// A draining worker gets no new step (even the one holding its layers,
/// with room), finishes the one it was sent before it said so — its end
/// reaches the build as usual, nothing lost or retried — and is detached
/// once it runs nothing: its call's stream of steps ends.
#[test]
fn a_draining_worker_finishes_its_steps_takes_none_and_is_detached() {
    let farm = Farm::new(None);
    let mut holds = hello("holds", &["base"]);
    holds.parallelism = 2;
    let (s1, mut rx1) = attach(&farm, &holds);
    let (s2, mut rx2) = attach(&farm, &hello("other", &[]));
    let layers = vec![("base".to_owned(), 1 << 30)];

    let first = run(&farm, layers.clone());
    let sent = received(&mut rx1);
    farm.deliver("holds", s1, draining());
    let listed = farm.workers();
    assert!(listed[0].draining && listed[0].running == 1, "{listed:?}");
    assert!(!listed[1].draining, "{listed:?}");

    // Its layers and a free slot would win it the step; it drains.
    let second = run(&farm, layers);
    let elsewhere = received(&mut rx2);
    farm.deliver("other", s2, done(elsewhere.step));
    assert_eq!(second.join().unwrap().unwrap().unwrap().exit_code, 7);

    farm.deliver("holds", s1, done(sent.step));
    let outcome = first.join().unwrap().unwrap().unwrap();
    assert_eq!(outcome.exit_code, 7, "the drained step's own end");
    let ids: Vec<String> = farm.workers().into_iter().map(|w| w.id).collect();
    assert_eq!(ids, ["other"], "detached once it ran nothing");
    assert!(
        rx1.blocking_recv().is_none(),
        "its stream of steps ends (OK): the worker's drain is over"
    );
    // Its call ending later is no news.
    farm.detach("holds", s1);
    assert_eq!(farm.workers().len(), 1);
}

/// A worker that drains while idle is detached at once; a later one of
/// the same name attaches and takes steps.
#[test]
fn an_idle_draining_worker_is_detached_at_once() {
    let farm = Farm::new(None);
    let (s1, mut rx1) = attach(&farm, &hello("w", &[]));
    farm.deliver("w", s1, draining());
    assert!(farm.workers().is_empty());
    assert!(rx1.blocking_recv().is_none());
    let (s2, mut rx2) = attach(&farm, &hello("w", &[]));
    let step = run(&farm, Vec::new());
    let sent = received(&mut rx2);
    farm.deliver("w", s2, done(sent.step));
    assert!(step.join().unwrap().unwrap().is_some());
}
