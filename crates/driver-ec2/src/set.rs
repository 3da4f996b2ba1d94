//! [`Ec2InstanceSet`]: the driver contract over the EC2 API.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::SharedCredentialsProvider;
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, InstanceInterruptionBehavior,
    InstanceMarketOptionsRequest, InstanceStateName, MarketType, ResourceType, ShutdownBehavior,
    SpotInstanceType, SpotMarketOptions, Tag, TagSpecification,
};
use aws_sdk_ec2::Client;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use flotilla_cloud::{
    check_tag_update, matches_filter, CapacityScope, CloudError, Console, CreateRequest, Health,
    Instance, InstanceSet, Offering, Tags, TAG_INSTANCE_SET, TAG_INSTANCE_TYPE,
};
use flotilla_domain::{InstanceId, InstanceSetId, InstanceType, PoolName};
use tokio::time::Instant;

use crate::errors::{to_cloud_error, Backoff, ErrorClass, Failure};
use crate::user_data::{self, NodeIdentity, MAX_USER_DATA};
use crate::{probe, AddressKind, Ec2Config, Ec2Error, LaunchSettings};

/// The states in which an instance exists for flotilla. `shutting-down` and
/// `terminated` instances are gone, though EC2 lists them for a while.
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// Most instances one destroy looks up and terminates in one call of each:
/// well within the 200 values EC2 takes in a filter.
const DESTROY_BATCH: usize = 100;

/// Tag EC2's console shows as the instance's name.
const NAME_TAG: &str = "Name";

/// How an instance is paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Market {
    Spot,
    OnDemand,
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        })
    }
}

/// What every RunInstances call of one create shares.
struct Launch<'a> {
    request: &'a CreateRequest,
    image: &'a str,
    tags: &'a Tags,
    settings: LaunchSettings<'a>,
    /// Rendered and base64-encoded.
    user_data: Option<String>,
}

/// What EC2 last said about one of our instances: the probe's source, so a
/// probe costs no API call.
#[derive(Debug, Clone)]
struct Observed {
    state: InstanceStateName,
    address: Option<String>,
    tags: Tags,
}

/// The instances of one instance set ID in one EC2 region.
pub struct Ec2InstanceSet {
    client: Client,
    config: Ec2Config,
    id: InstanceSetId,
    backoff: Backoff,
    /// Capacity shortages remembered, until when.
    shortages: Mutex<HashMap<(InstanceType, Market), Instant>>,
    observed: Mutex<HashMap<InstanceId, Observed>>,
    pub(crate) shapes: Mutex<HashMap<InstanceType, crate::InstanceShape>>,
    pub(crate) spot_prices: Mutex<HashMap<InstanceType, (Instant, Option<crate::SpotPrice>)>>,
    /// Console output read lately, by instance: EC2 updates it only now
    /// and then, so readers following it share one call per
    /// [`CONSOLE_CACHE`].
    consoles: Mutex<HashMap<InstanceId, ReadConsole>>,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    /// Each pool's launch settings as last configured (the config's
    /// `pools` at first): pools written through the API change them.
    pools: Mutex<BTreeMap<PoolName, crate::Ec2PoolOptions>>,
}

/// A console output, and when it was read.
type ReadConsole = (Instant, std::sync::Arc<Vec<u8>>);

/// How long a console output read is answered from memory.
const CONSOLE_CACHE: std::time::Duration = std::time::Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The SDK configuration the driver uses: credentials from the standard AWS
/// chain (or `credentials` if given), the config's region and endpoint, a
/// rustls + ring HTTPS client, the config's time limit on every call, and no
/// SDK retries: the engine retries, and a rate limit must reach the
/// throttle at once rather than be retried into.
pub async fn load_sdk_config(
    config: &Ec2Config,
    credentials: Option<SharedCredentialsProvider>,
) -> SdkConfig {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(
            config
                .request_timeout
                .min(std::time::Duration::from_secs(5)),
        )
        .operation_timeout(config.request_timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .http_client(http)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(timeouts);
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    loader.load().await
}

impl Ec2InstanceSet {
    /// Opens instance set `id` with credentials from the standard AWS chain,
    /// and logs how many instances of other instance sets it can see.
    pub async fn open(config: Ec2Config, id: InstanceSetId) -> Result<Self, Ec2Error> {
        Self::open_with(config, id, None).await
    }

    /// [`open`](Self::open) with explicit credentials (None: the standard
    /// chain).
    pub async fn open_with(
        config: Ec2Config,
        id: InstanceSetId,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Result<Self, Ec2Error> {
        config.validate()?;
        let sdk = load_sdk_config(&config, credentials).await;
        // Asked once, now: without credentials every call would fail the
        // same way (after the chain's last resort, the instance metadata
        // address, times out), at every resync.
        if let Some(provider) = sdk.credentials_provider() {
            use aws_sdk_ec2::config::ProvideCredentials;
            if let Err(e) = provider.provide_credentials().await {
                return Err(Ec2Error::NoCredentials {
                    reason: aws_sdk_ec2::error::DisplayErrorContext(&e).to_string(),
                });
            }
        }
        let set = Self::new(config, id, &sdk)?;
        match set.census().await {
            Ok(census) => set.log_census(&census),
            // Wrong credentials or permissions are found now, not at the
            // first deploy; a passing outage must not stop the server.
            Err(e @ CloudError::Permanent { .. }) => return Err(Ec2Error::Cloud(e)),
            Err(e) => {
                tracing::warn!(instance_set = %set.id, error = %e, "cannot list EC2 instances yet; carrying on")
            }
        }
        Ok(set)
    }

    /// The set over an SDK configuration made elsewhere; makes no call.
    pub fn new(config: Ec2Config, id: InstanceSetId, sdk: &SdkConfig) -> Result<Self, Ec2Error> {
        config.validate()?;
        Ok(Self {
            client: Client::new(sdk),
            pools: Mutex::new(config.pools.clone()),
            config,
            id,
            backoff: Backoff::default(),
            shortages: Mutex::new(HashMap::new()),
            observed: Mutex::new(HashMap::new()),
            shapes: Mutex::new(HashMap::new()),
            spot_prices: Mutex::new(HashMap::new()),
            consoles: Mutex::new(HashMap::new()),
            calls: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn config(&self) -> &Ec2Config {
        &self.config
    }

    /// Pool `pool`'s launch settings over the driver's, as configured now.
    fn pool_options(&self, pool: Option<&PoolName>) -> Option<crate::Ec2PoolOptions> {
        pool.and_then(|p| lock(&self.pools).get(p).cloned())
    }

    /// The delay the last rate-limit error imposed, while the calls since
    /// have all been rate limited; None once a call succeeds.
    pub fn rate_limit_backoff(&self) -> Option<std::time::Duration> {
        self.backoff.current()
    }

    /// EC2 API calls made so far, by operation (`RunInstances`, …).
    pub fn api_calls(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.calls).clone()
    }

    /// Live instances carrying any instance set tag, counted by its value
    /// (this set's own included).
    pub async fn census(&self) -> Result<BTreeMap<String, usize>, CloudError> {
        let filters = vec![
            filter("tag-key", [TAG_INSTANCE_SET]),
            filter("instance-state-name", LIVE_STATES),
        ];
        let mut census = BTreeMap::new();
        for i in self.describe(filters).await? {
            if let Some(set) = tag_value(i.tags(), TAG_INSTANCE_SET) {
                *census.entry(set.to_owned()).or_insert(0) += 1;
            }
        }
        Ok(census)
    }

    fn log_census(&self, census: &BTreeMap<String, usize>) {
        let ours = census.get(self.id.as_str()).copied().unwrap_or(0);
        let others: Vec<String> = census
            .iter()
            .filter(|(set, _)| set.as_str() != self.id.as_str())
            .map(|(set, n)| format!("{set}: {n}"))
            .collect();
        if !others.is_empty() {
            tracing::info!(
                instance_set = %self.id,
                region = %self.config.region,
                "EC2 holds instances of other instance sets ({}); leaving them alone",
                others.join(", ")
            );
        }
        tracing::debug!(instance_set = %self.id, ours, "opened EC2 instance set");
    }

    pub(crate) fn count_call(&self, operation: &'static str) {
        *lock(&self.calls).entry(operation).or_insert(0) += 1;
    }

    /// The contract's error for a failed call; feeds the rate-limit back-off.
    pub(crate) fn cloud_error(&self, failure: &Failure, ty: Option<&InstanceType>) -> CloudError {
        if failure.class != ErrorClass::RateLimited {
            tracing::debug!(instance_set = %self.id, error = %failure, "EC2 call failed");
        }
        to_cloud_error(failure, ty, &self.backoff)
    }

    pub(crate) fn succeeded(&self) {
        self.backoff.succeed();
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    fn owns(&self, tags: &[Tag]) -> bool {
        tag_value(tags, TAG_INSTANCE_SET) == Some(self.id.as_str())
    }

    /// Every instance matching `filters`, all pages.
    async fn describe(
        &self,
        filters: Vec<Filter>,
    ) -> Result<Vec<aws_sdk_ec2::types::Instance>, CloudError> {
        let mut pages = self
            .client
            .describe_instances()
            .set_filters(Some(filters))
            .max_results(self.config.list_page_size as i32)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            self.count_call("DescribeInstances");
            let page = page
                .map_err(|e| self.cloud_error(&Failure::from_sdk("DescribeInstances", &e), None))?;
            for reservation in page.reservations() {
                found.extend(reservation.instances().iter().cloned());
            }
        }
        self.succeeded();
        Ok(found)
    }

    /// The instance `id` as EC2 knows it, whoever owns it. None: EC2 does
    /// not know it (never existed, or terminated long ago).
    async fn describe_one(
        &self,
        id: &InstanceId,
    ) -> Result<Option<aws_sdk_ec2::types::Instance>, CloudError> {
        // A filter rather than InstanceIds: an unknown or malformed ID is
        // then an empty answer, not an error to interpret.
        let found = self
            .describe(vec![filter("instance-id", [id.as_str()])])
            .await?;
        Ok(found
            .into_iter()
            .find(|i| i.instance_id() == Some(id.as_str())))
    }

    /// The contract's instance for an EC2 instance, if it is well formed.
    fn to_instance(&self, i: &aws_sdk_ec2::types::Instance) -> Option<(Instance, Observed)> {
        let id = i.instance_id()?;
        let tags: Tags = i
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect();
        let instance_type = i
            .instance_type()
            .map(|t| t.as_str())
            .or_else(|| tags.get(TAG_INSTANCE_TYPE).map(String::as_str))
            .and_then(|t| InstanceType::new(t).ok());
        let Some(instance_type) = instance_type else {
            tracing::warn!(
                instance = id,
                "EC2 lists an instance without a usable instance type; leaving it out"
            );
            return None;
        };
        let address = self.address_of(i);
        let launched_at = i.launch_time().and_then(to_chrono).unwrap_or_else(Utc::now);
        let state = i
            .state()
            .and_then(|s| s.name())
            .cloned()
            .unwrap_or(InstanceStateName::Pending);
        let observed = Observed {
            state,
            address: address.clone(),
            tags: tags.clone(),
        };
        Some((
            Instance {
                id: InstanceId::new(id),
                instance_type,
                tags,
                address,
                launched_at,
            },
            observed,
        ))
    }

    fn address_of(&self, i: &aws_sdk_ec2::types::Instance) -> Option<String> {
        match self.config.address {
            AddressKind::Private => i.private_ip_address(),
            AddressKind::Public => i.public_ip_address(),
        }
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
    }

    /// Until when a capacity shortage of `ty` in `market` is remembered.
    fn shortage(&self, ty: &InstanceType, market: Market) -> Option<Instant> {
        let mut shortages = lock(&self.shortages);
        let key = (ty.clone(), market);
        match shortages.get(&key) {
            Some(until) if *until > Instant::now() => Some(*until),
            Some(_) => {
                shortages.remove(&key);
                None
            }
            None => None,
        }
    }

    fn remember_shortage(&self, ty: &InstanceType, market: Market) {
        lock(&self.shortages).insert(
            (ty.clone(), market),
            Instant::now() + self.config.capacity_memory,
        );
    }

    /// The markets to try for a create, in order.
    fn markets(settings: &LaunchSettings<'_>) -> Vec<Market> {
        match settings.spot {
            None => vec![Market::OnDemand],
            Some(spot) if spot.fallback_on_demand => vec![Market::Spot, Market::OnDemand],
            Some(_) => vec![Market::Spot],
        }
    }

    /// One RunInstances call.
    async fn run_instances(
        &self,
        launch: &Launch<'_>,
        market: Market,
        subnet: Option<&str>,
    ) -> Result<Vec<aws_sdk_ec2::types::Instance>, Failure> {
        let (request, settings) = (launch.request, &launch.settings);
        let tag_list: Vec<Tag> = launch
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        // Instance and root volume carry the tags from the first moment: no
        // window in which either exists untagged.
        let specs = [ResourceType::Instance, ResourceType::Volume]
            .into_iter()
            .map(|rt| {
                TagSpecification::builder()
                    .resource_type(rt)
                    .set_tags(Some(tag_list.clone()))
                    .build()
            })
            .collect();
        let mut call = self
            .client
            .run_instances()
            .image_id(launch.image)
            .instance_type(aws_sdk_ec2::types::InstanceType::from(
                request.instance_type.as_str(),
            ))
            .min_count(1)
            .max_count(request.count as i32)
            .set_tag_specifications(Some(specs));
        if !settings.security_groups.is_empty() {
            call = call.set_security_group_ids(Some(settings.security_groups.to_vec()));
        }
        if let Some(subnet) = subnet {
            call = call.subnet_id(subnet);
        }
        if let Some(key) = settings.key_name {
            call = call.key_name(key);
        }
        if let Some(profile) = settings.iam_instance_profile {
            let spec = IamInstanceProfileSpecification::builder();
            let spec = if profile.starts_with("arn:") {
                spec.arn(profile)
            } else {
                spec.name(profile)
            };
            call = call.iam_instance_profile(spec.build());
        }
        if let Some(user_data) = &launch.user_data {
            call = call.user_data(user_data);
        }
        if launch.request.shutdown_terminates {
            call = call.instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate);
        }
        if market == Market::Spot {
            let max_price = settings.spot.and_then(|s| s.max_price.clone());
            call = call.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .set_max_price(max_price)
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        self.count_call("RunInstances");
        match call.send().await {
            Ok(out) => {
                self.succeeded();
                Ok(out.instances().to_vec())
            }
            Err(e) => Err(Failure::from_sdk("RunInstances", &e)),
        }
    }

    /// Tries each subnet in turn. `Err(Ok(failure))`: capacity was short in
    /// every subnet; `Err(Err(e))`: any other failure.
    async fn launch(
        &self,
        launch: &Launch<'_>,
        market: Market,
    ) -> Result<Vec<aws_sdk_ec2::types::Instance>, Result<Failure, CloudError>> {
        let subnets: Vec<Option<&str>> = if launch.settings.subnets.is_empty() {
            vec![None]
        } else {
            launch
                .settings
                .subnets
                .iter()
                .map(|s| Some(s.as_str()))
                .collect()
        };
        let ty = &launch.request.instance_type;
        let mut capacity: Option<Failure> = None;
        let mut last: Option<Failure> = None;
        for (n, subnet) in subnets.iter().enumerate() {
            match self.run_instances(launch, market, *subnet).await {
                Ok(made) => return Ok(made),
                Err(f) if matches!(f.class, ErrorClass::Capacity | ErrorClass::Subnet) => {
                    if n + 1 < subnets.len() {
                        tracing::info!(instance_set = %self.id, subnet = subnet.unwrap_or("default"), %market, instance_type = %ty, error = %f, "subnet cannot take the instances; trying the next");
                    }
                    if f.class == ErrorClass::Capacity {
                        capacity = Some(f);
                    } else {
                        last = Some(f);
                    }
                }
                Err(f) => return Err(Err(self.cloud_error(&f, Some(ty)))),
            }
        }
        match (capacity, last) {
            (Some(f), _) => Err(Ok(f)),
            (None, Some(f)) => Err(Err(self.cloud_error(&f, Some(ty)))),
            (None, None) => unreachable!("at least one subnet is tried"),
        }
    }

    /// [`InstanceSet::destroy_many`] for at most [`DESTROY_BATCH`].
    async fn destroy_batch(&self, ids: &[InstanceId]) -> Vec<Result<(), CloudError>> {
        // A filter rather than InstanceIds: an unknown or malformed ID is
        // then missing from the answer, not an error for the whole batch.
        let found = match self
            .describe(vec![filter(
                "instance-id",
                ids.iter().map(InstanceId::as_str),
            )])
            .await
        {
            Ok(found) => found,
            Err(e) => return vec![Err(e); ids.len()],
        };
        let mut results = vec![Ok(()); ids.len()];
        let mut live = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            let Some(instance) = found.iter().find(|i| i.instance_id() == Some(id.as_str())) else {
                continue;
            };
            if !self.owns(instance.tags()) {
                results[n] = Err(CloudError::not_owned(id, &self.id));
            } else if !matches!(
                instance.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            ) {
                live.push(n);
            }
        }
        if !live.is_empty() {
            let batch: Vec<&InstanceId> = live.iter().map(|&n| &ids[n]).collect();
            match self.terminate(&batch).await {
                Ok(()) => {}
                // One went between the lookup and the call, and EC2 refuses
                // the whole call for it: each on its own, where gone is done.
                Err(f) if f.class == ErrorClass::InstanceNotFound && batch.len() > 1 => {
                    for &n in &live {
                        if let Err(f) = self.terminate(&[&ids[n]]).await {
                            if f.class != ErrorClass::InstanceNotFound {
                                results[n] = Err(self.cloud_error(&f, None));
                            }
                        }
                    }
                }
                Err(f) if f.class == ErrorClass::InstanceNotFound => {}
                Err(f) => {
                    let e = self.cloud_error(&f, None);
                    for &n in &live {
                        results[n] = Err(e.clone());
                    }
                }
            }
        }
        let mut observed = lock(&self.observed);
        for (id, result) in ids.iter().zip(&results) {
            if result.is_ok() {
                observed.remove(id);
            }
        }
        for &n in &live {
            if results[n].is_ok() {
                tracing::info!(instance_set = %self.id, instance = %ids[n], "terminating EC2 instance");
            }
        }
        results
    }

    /// One TerminateInstances call.
    async fn terminate(&self, ids: &[&InstanceId]) -> Result<(), Failure> {
        self.count_call("TerminateInstances");
        let call = ids
            .iter()
            .fold(self.client.terminate_instances(), |call, id| {
                call.instance_ids(id.as_str())
            });
        match call.send().await {
            Ok(_) => {
                self.succeeded();
                Ok(())
            }
            Err(e) => Err(Failure::from_sdk("TerminateInstances", &e)),
        }
    }

    fn observe(&self, found: &[(Instance, Observed)]) {
        let mut observed = lock(&self.observed);
        for (i, o) in found {
            observed.insert(i.id.clone(), o.clone());
        }
    }
}

/// A DescribeInstances filter.
fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(str::to_owned).collect()))
        .build()
}

fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn to_chrono(t: &aws_sdk_ec2::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

fn is_live(state: &InstanceStateName) -> bool {
    LIVE_STATES.contains(&state.as_str())
}

#[async_trait]
impl InstanceSet for Ec2InstanceSet {
    fn id(&self) -> &InstanceSetId {
        &self.id
    }

    fn max_batch(&self) -> u32 {
        self.config.max_batch.max(1)
    }

    async fn create(&self, request: &CreateRequest) -> Result<Vec<Instance>, CloudError> {
        let max_batch = self.max_batch();
        if request.count == 0 || request.count > max_batch {
            return Err(CloudError::permanent(format!(
                "create count {} is outside 1..={max_batch} (the ec2 driver's max_batch)",
                request.count
            )));
        }
        if request.workload.is_some() {
            return Err(CloudError::permanent(
                "the ec2 driver runs no per-cluster workloads; its nodes run their pool's init_data",
            ));
        }
        let Some(image) = request.image.as_deref().or(self.config.image.as_deref()) else {
            return Err(CloudError::permanent(
                "no image (AMI) to launch: set the pool's image or the driver's image",
            ));
        };
        let ty = &request.instance_type;
        let mut tags = request.instance_tags(&self.id);
        tags.entry(NAME_TAG.to_owned())
            .or_insert_with(|| format!("flotilla-{}", request.cluster));
        let user_data = match &request.init_data {
            None => None,
            Some(template) => {
                let rendered = user_data::render(
                    template,
                    &NodeIdentity {
                        cluster: &request.cluster,
                        pool: &request.pool,
                        instance_type: ty,
                        instance_set: &self.id,
                    },
                );
                if rendered.len() > MAX_USER_DATA {
                    return Err(CloudError::permanent(format!(
                        "the user data of pool {} is {} bytes once rendered; EC2 takes at most {MAX_USER_DATA}",
                        request.pool,
                        rendered.len()
                    )));
                }
                Some(base64::engine::general_purpose::STANDARD.encode(rendered))
            }
        };
        let options = self.pool_options(Some(&request.pool));
        let launch = Launch {
            request,
            image,
            tags: &tags,
            settings: self.config.launch_settings_with(options.as_ref()),
            user_data,
        };

        // A request that names on demand (a job that did not ask for spot)
        // is bought on demand, whatever the pool would do.
        let markets = match request.market {
            Some(flotilla_domain::Market::OnDemand) => vec![Market::OnDemand],
            _ => Self::markets(&launch.settings),
        };
        let mut short: Option<CloudError> = None;
        for (n, market) in markets.iter().copied().enumerate() {
            let fallback = n + 1 < markets.len();
            if let Some(until) = self.shortage(ty, market) {
                let left = until.saturating_duration_since(Instant::now());
                tracing::debug!(instance_set = %self.id, instance_type = %ty, %market, "skipping: capacity was short recently");
                short = Some(CloudError::InsufficientCapacity {
                    scope: CapacityScope::InstanceType(ty.clone()),
                    message: format!(
                        "{market} capacity for {ty} was short; not asked again for {}s",
                        left.as_secs()
                    ),
                });
                continue;
            }
            match self.launch(&launch, market).await {
                Ok(made) => {
                    let found: Vec<(Instance, Observed)> = made
                        .iter()
                        .filter_map(|i| self.to_instance(i))
                        .map(|(mut i, mut o)| {
                            // The tags were set with the instance; EC2 need
                            // not echo them.
                            i.tags = tags.clone();
                            o.tags = tags.clone();
                            i.instance_type = ty.clone();
                            (i, o)
                        })
                        .collect();
                    if found.is_empty() {
                        return Err(CloudError::transient(
                            "RunInstances succeeded but returned no instance",
                        ));
                    }
                    self.observe(&found);
                    if found.len() < request.count as usize {
                        tracing::info!(instance_set = %self.id, cluster = %request.cluster, instance_type = %ty, %market, made = found.len(), wanted = request.count, "EC2 launched fewer instances than asked");
                    }
                    tracing::info!(instance_set = %self.id, cluster = %request.cluster, instance_type = %ty, %market, count = found.len(), "launched EC2 instances");
                    return Ok(found.into_iter().map(|(i, _)| i).collect());
                }
                Err(Ok(failure)) => {
                    self.remember_shortage(ty, market);
                    if fallback {
                        tracing::info!(instance_set = %self.id, instance_type = %ty, error = %failure, "spot capacity is short; falling back to on-demand");
                    }
                    short = Some(self.cloud_error(&failure, Some(ty)));
                }
                Err(Err(e)) => return Err(e),
            }
        }
        Err(short.unwrap_or_else(|| CloudError::InsufficientCapacity {
            scope: CapacityScope::InstanceType(ty.clone()),
            message: format!("no market to launch {ty} in"),
        }))
    }

    async fn list(&self, filter_tags: &Tags) -> Result<Vec<Instance>, CloudError> {
        let mut filters = vec![
            filter(&format!("tag:{TAG_INSTANCE_SET}"), [self.id.as_str()]),
            filter("instance-state-name", LIVE_STATES),
        ];
        for (k, v) in filter_tags {
            filters.push(filter(&format!("tag:{k}"), [v.as_str()]));
        }
        let described = self.describe(filters).await?;
        // EC2's filters take wildcards and the endpoint may be lax: check
        // ownership, tags and state here too, exactly.
        let mut found: BTreeMap<InstanceId, (Instance, Observed)> = BTreeMap::new();
        for i in &described {
            if !self.owns(i.tags()) {
                tracing::warn!(instance = i.instance_id().unwrap_or("?"), instance_set = %self.id, "EC2 listed an instance without our tag; ignoring it");
                continue;
            }
            let Some((instance, observed)) = self.to_instance(i) else {
                continue;
            };
            if !is_live(&observed.state) || !matches_filter(&instance.tags, filter_tags) {
                continue;
            }
            found.insert(instance.id.clone(), (instance, observed));
        }
        {
            let mut observed = lock(&self.observed);
            observed
                .retain(|id, o| found.contains_key(id) || !matches_filter(&o.tags, filter_tags));
            for (id, (_, o)) in &found {
                observed.insert(id.clone(), o.clone());
            }
        }
        Ok(found.into_values().map(|(i, _)| i).collect())
    }

    async fn destroy(&self, id: &InstanceId) -> Result<(), CloudError> {
        let mut results = self.destroy_many(std::slice::from_ref(id)).await;
        results.pop().expect("one result per instance")
    }

    /// One DescribeInstances and one TerminateInstances for each
    /// [`DESTROY_BATCH`] instances, however many: each is looked up first,
    /// and only this set's live ones are terminated.
    async fn destroy_many(&self, ids: &[InstanceId]) -> Vec<Result<(), CloudError>> {
        let mut results = Vec::with_capacity(ids.len());
        for batch in ids.chunks(DESTROY_BATCH) {
            results.extend(self.destroy_batch(batch).await);
        }
        results
    }

    async fn set_tags(&self, id: &InstanceId, tags: &Tags) -> Result<(), CloudError> {
        check_tag_update(tags)?;
        let gone = || CloudError::permanent(format!("instance {id} does not exist"));
        let Some(instance) = self.describe_one(id).await? else {
            return Err(gone());
        };
        if !self.owns(instance.tags()) {
            return Err(CloudError::not_owned(id, &self.id));
        }
        if !instance.state().and_then(|s| s.name()).is_some_and(is_live) {
            return Err(gone());
        }
        if tags.is_empty() {
            return Ok(());
        }
        self.count_call("CreateTags");
        let call = tags.iter().fold(
            self.client.create_tags().resources(id.as_str()),
            |call, (k, v)| call.tags(Tag::builder().key(k).value(v).build()),
        );
        match call.send().await {
            Ok(_) => self.succeeded(),
            Err(e) => {
                let failure = Failure::from_sdk("CreateTags", &e);
                return Err(match failure.class {
                    ErrorClass::InstanceNotFound => gone(),
                    _ => self.cloud_error(&failure, None),
                });
            }
        }
        if let Some(o) = lock(&self.observed).get_mut(id) {
            o.tags
                .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(())
    }

    /// Ready when the last listing saw the instance running and, with a
    /// health check configured (the instance's pool's, else the driver's),
    /// when the node answers it. Makes no EC2
    /// call: the engine lists on every resync, and a call per probe would
    /// spend the account's API budget.
    async fn probe(&self, instance: &Instance) -> Health {
        let observed = lock(&self.observed).get(&instance.id).cloned();
        let Some(observed) = observed else {
            return Health::NotReady;
        };
        if observed.state != InstanceStateName::Running {
            return Health::NotReady;
        }
        let options = self.pool_options(instance.pool().as_ref());
        let Some(check) = self
            .config
            .launch_settings_with(options.as_ref())
            .health_check
        else {
            return Health::Ready;
        };
        let Some(address) = observed.address.or_else(|| instance.address.clone()) else {
            return Health::NotReady;
        };
        probe::check(&address, check, &instance.id).await
    }

    async fn address(&self, instance: &Instance) -> Option<String> {
        lock(&self.observed)
            .get(&instance.id)
            .and_then(|o| o.address.clone())
            .or_else(|| instance.address.clone())
    }

    /// The type's shape (cached for good) and, for a pool that launches
    /// spot, its spot price (cached for `price_cache`).
    async fn offering(
        &self,
        pool: &PoolName,
        instance_type: &InstanceType,
    ) -> Result<Offering, CloudError> {
        let shape = self.instance_shape(instance_type).await?;
        let options = self.pool_options(Some(pool));
        let spot_price = match self.config.launch_settings_with(options.as_ref()).spot {
            Some(_) => self.spot_price(instance_type).await?,
            None => None,
        };
        Ok(Offering {
            shape: Some(shape),
            spot_price,
        })
    }

    /// A section that does not parse was refused when the pool was
    /// written; one met here (written by a newer flotilla) is logged and
    /// the pool launches with the driver's settings.
    fn configure_pool(&self, pool: &PoolName, section: Option<&serde_json::Value>) {
        let options = match section.map(crate::Ec2PoolOptions::from_value) {
            None => None,
            Some(Ok(options)) => Some(options),
            Some(Err(e)) => {
                tracing::warn!(instance_set = %self.id, %pool, error = %e, "pool's ec2 section not understood; using the driver's settings");
                None
            }
        };
        let mut pools = lock(&self.pools);
        match options {
            Some(options) => pools.insert(pool.clone(), options),
            None => pools.remove(pool),
        };
    }

    /// The instance's console output as EC2 keeps it (GetConsoleOutput,
    /// latest: its last 64 KiB, updated by EC2 now and then, not live),
    /// read at most once per [`CONSOLE_CACHE`] per instance.
    async fn console(
        &self,
        id: &InstanceId,
        from: Option<u64>,
        limit: usize,
    ) -> Result<Option<Console>, CloudError> {
        let cached = lock(&self.consoles)
            .get(id)
            .filter(|(at, _)| at.elapsed() < CONSOLE_CACHE)
            .map(|(_, printed)| std::sync::Arc::clone(printed));
        if let Some(printed) = cached {
            return Ok(Some(Console::window(&printed, from, limit)));
        }
        let listed = lock(&self.observed).contains_key(id);
        if !listed {
            match self.describe_one(id).await? {
                Some(instance) if self.owns(instance.tags()) => {}
                Some(_) => return Err(CloudError::not_owned(id, &self.id)),
                None => return Ok(Some(Console::window(&[], from, limit))),
            }
        }
        self.count_call("GetConsoleOutput");
        let output = match self
            .client
            .get_console_output()
            .instance_id(id.as_str())
            .latest(true)
            .send()
            .await
        {
            Ok(output) => {
                self.succeeded();
                output
            }
            Err(e) => {
                let failure = Failure::from_sdk("GetConsoleOutput", &e);
                return Err(match failure.class {
                    ErrorClass::InstanceNotFound => {
                        return Ok(Some(Console::window(&[], from, limit)))
                    }
                    _ => self.cloud_error(&failure, None),
                });
            }
        };
        let printed = output
            .output()
            .map(|encoded| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .unwrap_or_else(|_| encoded.as_bytes().to_vec())
            })
            .unwrap_or_default();
        let console = Console::window(&printed, from, limit);
        let mut consoles = lock(&self.consoles);
        consoles.retain(|_, (at, _)| at.elapsed() < CONSOLE_CACHE);
        consoles.insert(id.clone(), (Instant::now(), std::sync::Arc::new(printed)));
        Ok(Some(console))
    }
}
