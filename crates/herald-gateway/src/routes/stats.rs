//! `GET /v1/stats` (deliveries over time, overall, by tenant or by subscription) and
//! `GET /v1/overview` (what an operator looks at first), both answered from the counters the
//! gateway keeps as deliveries happen (`crate::stats`), never by scanning a stream.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use herald_core::nats;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::scan::parse_time;
use crate::stats::{Counts, Interval, Of, OpenCircuit, total};
use crate::{AppState, Query};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsQuery {
    /// One subscription's deliveries.
    subscription: Option<String>,
    /// One tenant's events and deliveries (a tenant token's own by default; everything for
    /// `admin`).
    tenant: Option<String>,
    /// `minute` (the last hour) or `hour` (the window kept, a day by default).
    #[param(inline)]
    interval: Option<Interval>,
    /// RFC 3339: the first bucket (clamped to what is kept).
    since: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Bucket {
    /// The bucket's start (RFC 3339).
    start: String,
    #[serde(flatten)]
    counts: Counts,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StatsView {
    /// `subscription`, `tenant` or `all`.
    scope: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription_id: Option<String>,
    #[schema(value_type = String)]
    interval: &'static str,
    /// True while the gateway is still reading back the window after a start: counts may be
    /// short.
    warming: bool,
    buckets: Vec<Bucket>,
    /// The buckets summed.
    totals: Counts,
    /// `delivered / (delivered + failed + dead_lettered)` over the buckets; absent without
    /// attempts.
    #[serde(skip_serializing_if = "Option::is_none")]
    success_rate: Option<f64>,
}

fn success_rate(c: &Counts) -> Option<f64> {
    let settled = c.delivered + c.failed + c.dead_lettered;
    (settled > 0).then(|| c.delivered as f64 / settled as f64)
}

fn buckets(series: Vec<(i64, Counts)>) -> Vec<Bucket> {
    series
        .into_iter()
        .map(|(start, counts)| Bucket {
            start: herald_core::rfc3339(
                OffsetDateTime::from_unix_timestamp(start).unwrap_or(OffsetDateTime::UNIX_EPOCH),
            ),
            counts,
        })
        .collect()
}

/// `GET /v1/stats?subscription=|tenant=&interval=minute|hour&since=`.
#[utoipa::path(get, path = "/v1/stats", tag = "stats", params(StatsQuery),
    responses((status = 200, description = "Counts by bucket, oldest first", body = StatsView), crate::error::Problems),
    security(("bearer" = [])))]
pub(crate) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let since = parse_time("since", q.since.as_deref())?.map(|t| t.unix_timestamp());
    let interval = q.interval.unwrap_or(Interval::Hour);
    let (scope, tenant, subscription_id) = match (&q.subscription, &q.tenant) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(Some("subscription"), "give `subscription` or `tenant`, not both"));
        }
        (Some(id), None) => {
            let (_, _, sub) = crate::routes::subscriptions::locate(&state, &caller, id).await?;
            ("subscription", Some(sub.tenant), Some(sub.id))
        }
        (None, Some(t)) => {
            herald_core::ids::TenantId::parse(t)
                .map_err(|e| ApiError::invalid(Some("tenant"), format!("tenant: {}", e.0)))?;
            caller.require_tenant(t)?;
            ("tenant", Some(t.clone()), None)
        }
        (None, None) => match caller.tenant_limit() {
            None => ("all", None, None),
            Some(ts) => match ts.as_slice() {
                [one] => ("tenant", Some(one.to_string()), None),
                [] => return Err(ApiError::forbidden("statistics need `admin` or a `tenant:<id>` scope")),
                _ => return Err(ApiError::invalid(Some("tenant"), "this token covers several tenants: name one")),
            },
        },
    };
    let of = match (&subscription_id, &tenant) {
        (Some(s), _) => Of::Subscription(s),
        (None, Some(t)) => Of::Tenant(t),
        (None, None) => Of::All,
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let series = state.stats.series(of, interval, since, now);
    let totals = total(&series);
    Ok(Json(StatsView {
        scope,
        tenant,
        subscription_id,
        interval: match interval {
            Interval::Minute => "minute",
            Interval::Hour => "hour",
        },
        warming: state.stats.warming(),
        success_rate: success_rate(&totals),
        totals,
        buckets: buckets(series),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Lag {
    /// Events stored and not yet fanned out.
    events_pending: u64,
    /// Deliveries due and not yet handed to a dispatcher.
    deliveries_pending: u64,
    /// Deliveries handed out and not yet acknowledged (in flight).
    deliveries_in_flight: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TenantRow {
    tenant: String,
    subscriptions: usize,
    /// Subscriptions disabled (by a person or by Herald).
    disabled: usize,
    /// Counts over the window kept.
    totals: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    success_rate: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Overview {
    warming: bool,
    /// The last hour, a bucket a minute.
    last_hour: Vec<Bucket>,
    last_hour_totals: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    success_rate: Option<f64>,
    /// The window kept (a day by default), summed.
    window_totals: Counts,
    /// Absent when NATS could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    lag: Option<Lag>,
    /// Dead letters kept in `HERALD_DLQ`.
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letters: Option<u64>,
    open_circuits: Vec<OpenCircuit>,
    subscriptions: usize,
    tenants: Vec<TenantRow>,
}

/// `GET /v1/overview` (admin): the last hour, lag, dead letters, open circuits and tenants.
#[utoipa::path(get, path = "/v1/overview", tag = "stats",
    responses((status = 200, description = "The state of the deployment", body = Overview), crate::error::Problems),
    security(("bearer" = [])))]
pub(crate) async fn overview(State(state): State<AppState>, caller: Caller) -> Result<Json<Overview>, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::forbidden("the overview needs the `admin` scope"));
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let last_hour = state.stats.series(Of::All, Interval::Minute, None, now);
    let window = state.stats.series(Of::All, Interval::Hour, None, now);
    let last_hour_totals = total(&last_hour);
    let lag = lag(&state).await;
    let dead_letters = match state.js.get_stream(nats::DLQ_STREAM).await {
        Ok(mut s) => s.info().await.ok().map(|i| i.state.messages),
        Err(_) => None,
    };
    let by_tenant = state.stats.tenant_totals();
    let counts = state.registry.tenant_counts();
    let mut tenants: Vec<TenantRow> = counts
        .keys()
        .chain(by_tenant.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|tenant| {
            let count = counts.get(tenant).copied().unwrap_or_default();
            let totals = by_tenant.get(tenant).copied().unwrap_or_default();
            TenantRow {
                disabled: count.disabled,
                subscriptions: count.subscriptions,
                success_rate: success_rate(&totals),
                totals,
                tenant: tenant.clone(),
            }
        })
        .collect();
    tenants.sort_by(|a, b| b.totals.attempts.cmp(&a.totals.attempts).then(a.tenant.cmp(&b.tenant)));
    Ok(Json(Overview {
        warming: state.stats.warming(),
        success_rate: success_rate(&last_hour_totals),
        last_hour_totals,
        last_hour: buckets(last_hour),
        window_totals: total(&window),
        lag,
        dead_letters,
        open_circuits: state.stats.open_circuits(),
        subscriptions: state.registry.len(),
        tenants,
    }))
}

/// Summed over every partition in use.
async fn lag(state: &AppState) -> Option<Lag> {
    let mut lag = Lag { events_pending: 0, deliveries_pending: 0, deliveries_in_flight: 0 };
    for partition in &state.in_use {
        let events = state.js.get_stream_no_info(partition.events_stream()).await.ok()?;
        let fanout = events.consumer_info(nats::FANOUT_CONSUMER).await.ok()?;
        let deliveries = state.js.get_stream_no_info(partition.deliveries_stream()).await.ok()?;
        let deliver = deliveries.consumer_info(nats::DELIVER_CONSUMER).await.ok()?;
        lag.events_pending += fanout.num_pending;
        lag.deliveries_pending += deliver.num_pending;
        lag.deliveries_in_flight += deliver.num_ack_pending as u64;
    }
    Some(lag)
}
