//! Start-up: what both services create, and what they refuse.

use clap::Parser as _;
use herald_harness::NatsServer;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_refuse_a_server_without_jetstream_with_a_clear_message() {
    herald_harness::init();
    let nats = NatsServer::start_without_jetstream();

    let config = herald_gateway::Config::try_parse_from(["herald-gateway", "--nats-url", &nats.url()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = herald_gateway::run(config, listener, std::future::pending()).await.unwrap_err();
    assert!(format!("{err:#}").contains("JetStream is not available"), "{err:#}");

    let config = herald_dispatcher::Config::try_parse_from(herald_harness::dispatcher_args(&nats.url())).unwrap();
    let err = herald_dispatcher::run(config, CancellationToken::new()).await.unwrap_err();
    assert!(format!("{err:#}").contains("start nats-server with -js"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_is_idempotent_and_creates_the_documented_topology() {
    herald_harness::init();
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let topology = herald_core::nats::Topology::default();
    for _ in 0..2 {
        herald_core::nats::ensure_streams(&js, &topology).await.unwrap();
        herald_core::nats::ensure_consumers(&js, &topology, &[herald_core::nats::Partition::ZERO]).await.unwrap();
    }
    for (stream, subjects) in [
        ("HERALD_EVENTS", vec!["herald.events.>"]),
        ("HERALD_DELIVERIES", vec!["herald.deliveries.>", "herald.lanes.>", "herald.retries.>"]),
        ("HERALD_DLQ", vec!["herald.dlq.>"]),
        ("HERALD_ATTEMPTS", vec!["herald.attempts.>"]),
        ("KV_herald-subscriptions", vec!["$KV.herald-subscriptions.>"]),
    ] {
        let info = js.get_stream(stream).await.unwrap().info().await.unwrap().clone();
        assert_eq!(info.config.subjects, subjects, "{stream}");
    }
    let events = js.get_stream("HERALD_EVENTS").await.unwrap().info().await.unwrap().clone();
    assert_eq!(events.config.duplicate_window, std::time::Duration::from_secs(120));
    let deliveries = js.get_stream("HERALD_DELIVERIES").await.unwrap().info().await.unwrap().clone();
    assert!(deliveries.config.allow_message_schedules);
    let stream = js.get_stream("HERALD_DELIVERIES").await.unwrap();
    let consumer = stream.consumer_info("herald-deliver").await.unwrap();
    assert_eq!(consumer.config.filter_subject, "herald.deliveries.>");

    // Fan-out: shared by every replica; the ordered fan-out pinned, and idle until a subscription
    // asks for order.
    let events = js.get_stream("HERALD_EVENTS").await.unwrap();
    let fanout = events.consumer_info("herald-fanout").await.unwrap();
    assert_eq!(fanout.config.priority_policy, async_nats::jetstream::consumer::PriorityPolicy::None);
    let ordered = events.consumer_info("herald-fanout-ordered").await.unwrap();
    assert_eq!(ordered.config.priority_policy, async_nats::jetstream::consumer::PriorityPolicy::PinnedClient);
    assert_eq!(ordered.config.filter_subjects, ["herald.events.$none"]);
    assert_eq!(ordered.config.max_ack_pending, 1);

    // A changed setting is applied on the next start-up, not refused.
    let longer = herald_core::nats::Topology { events_max_age: std::time::Duration::from_secs(86_400), ..topology };
    herald_core::nats::ensure_streams(&js, &longer).await.unwrap();
    let events = js.get_stream("HERALD_EVENTS").await.unwrap().info().await.unwrap().clone();
    assert_eq!(events.config.max_age, std::time::Duration::from_secs(86_400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_fan_out_of_an_earlier_version_is_shared_after_the_upgrade() {
    use async_nats::jetstream::consumer::{self, PriorityPolicy};
    herald_harness::init();
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let topology = herald_core::nats::Topology::default();
    herald_core::nats::ensure_streams(&js, &topology).await.unwrap();
    // herald-fanout as versions before the shared fan-out made it, with an event fanned out.
    let events = js.get_stream("HERALD_EVENTS").await.unwrap();
    let before = consumer::pull::Config {
        durable_name: Some("herald-fanout".into()),
        filter_subject: "herald.events.>".into(),
        ack_policy: consumer::AckPolicy::Explicit,
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec!["herald".into()],
        priority_timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    };
    events.create_consumer(before).await.unwrap();
    js.publish("herald.events.default.up.grade", "{}".into()).await.unwrap().await.unwrap();

    herald_core::nats::ensure_consumers(&js, &topology, &[herald_core::nats::Partition::ZERO]).await.unwrap();
    let info = events.consumer_info("herald-fanout").await.unwrap();
    assert_eq!(info.config.priority_policy, PriorityPolicy::None, "unpinned in place");
    assert_eq!(info.num_pending, 1, "kept its position: the event is still to be fanned out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_fan_out_of_an_earlier_version_lets_one_event_out_at_a_time_after_the_upgrade() {
    use async_nats::jetstream::consumer::{self, PriorityPolicy};
    herald_harness::init();
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let topology = herald_core::nats::Topology::default();
    herald_core::nats::ensure_streams(&js, &topology).await.unwrap();
    // herald-fanout-ordered as earlier versions made it: many events out at once, the ack wait
    // of deliveries; serving an ordered subscription, with an event to fan out.
    let events = js.get_stream("HERALD_EVENTS").await.unwrap();
    let before = consumer::pull::Config {
        durable_name: Some("herald-fanout-ordered".into()),
        filter_subjects: vec!["herald.events.default.up.>".into()],
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: std::time::Duration::from_secs(30),
        max_ack_pending: 20_000,
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec!["herald".into()],
        priority_timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    };
    events.create_consumer(before).await.unwrap();
    js.publish("herald.events.default.up.grade", "{}".into()).await.unwrap().await.unwrap();

    herald_core::nats::ensure_consumers(&js, &topology, &[herald_core::nats::Partition::ZERO]).await.unwrap();
    let info = events.consumer_info("herald-fanout-ordered").await.unwrap();
    assert_eq!(info.config.max_ack_pending, 1, "one event out at a time, so none overtakes another");
    assert_eq!(info.config.ack_wait, herald_core::nats::ORDERED_ACK_WAIT);
    assert_eq!(info.config.filter_subjects, ["herald.events.default.up.>"], "its filter kept");
    assert_eq!(info.num_pending, 1, "kept its position");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_nats_needs_and_accepts_credentials() {
    herald_harness::init();
    let nats = NatsServer::start_with_password("herald", "s3cret-pass");

    let config = herald_gateway::Config::try_parse_from(["herald-gateway", "--nats-url", &nats.url()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = herald_gateway::run(config, listener, std::future::pending()).await.unwrap_err();
    assert!(format!("{err:#}").to_lowercase().contains("authorization"), "{err:#}");

    let mut args = herald_harness::dispatcher_args(&nats.url());
    args.extend(["--nats-user", "herald", "--nats-password", "s3cret-pass"].map(String::from));
    let config = herald_dispatcher::Config::try_parse_from(args).unwrap();
    let stop = CancellationToken::new();
    let dispatcher = tokio::spawn(herald_dispatcher::run(config, stop.clone()));
    // It connects, creates the streams, and runs until told to stop.
    let client = async_nats::ConnectOptions::new()
        .user_and_password("herald".into(), "s3cret-pass".into())
        .connect(nats.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while js.get_stream("HERALD_EVENTS").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the dispatcher did not bootstrap");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_have_streams_and_consumers_of_their_own_and_fewer_leave_the_rest_to_drain() {
    use herald_core::nats::{Partition, Partitions, Topology, ensure_consumers, ensure_streams};
    herald_harness::init();
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let three = Topology { partitions: Partitions::new(3).unwrap(), ..Topology::default() };
    let handles = ensure_streams(&js, &three).await.unwrap();
    assert_eq!(handles.in_use, [Partition(0), Partition(1), Partition(2)]);
    let consumers = ensure_consumers(&js, &three, &handles.in_use).await.unwrap();
    assert_eq!(consumers.len(), 3);
    for (stream, subjects) in [
        ("HERALD_EVENTS", vec!["herald.events.>"]),
        ("HERALD_EVENTS_2", vec!["herald.p2.events.>"]),
        ("HERALD_DELIVERIES_1", vec!["herald.p1.deliveries.>", "herald.p1.lanes.>", "herald.p1.retries.>"]),
        ("HERALD_ATTEMPTS_2", vec!["herald.p2.attempts.>"]),
    ] {
        let info = js.get_stream(stream).await.unwrap().info().await.unwrap().clone();
        assert_eq!(info.config.subjects, subjects, "{stream}");
    }
    let fanout = js.get_stream("HERALD_EVENTS_1").await.unwrap().consumer_info("herald-fanout").await.unwrap();
    assert_eq!(fanout.config.filter_subject, "herald.p1.events.>");
    let ordered = js.get_stream("HERALD_EVENTS_1").await.unwrap().consumer_info("herald-fanout-ordered").await.unwrap();
    assert_eq!(ordered.config.filter_subjects, ["herald.p1.events.$none"]);
    let deliver = js.get_stream("HERALD_DELIVERIES_2").await.unwrap().consumer_info("herald-deliver").await.unwrap();
    assert_eq!(deliver.config.filter_subject, "herald.p2.deliveries.>");

    // Down to two: the third partition's streams stay, to be drained.
    let two = Topology { partitions: Partitions::new(2).unwrap(), ..Topology::default() };
    let handles = ensure_streams(&js, &two).await.unwrap();
    assert_eq!(handles.in_use, [Partition(0), Partition(1), Partition(2)], "partition 2 is left to drain");
    // And one partition on a server that never had more: today's layout alone.
    let other = NatsServer::start();
    let js = async_nats::jetstream::new(other.client().await);
    let handles = ensure_streams(&js, &Topology::default()).await.unwrap();
    assert_eq!(handles.in_use, [Partition::ZERO]);
    assert!(js.get_stream("HERALD_EVENTS_1").await.is_err());
}
