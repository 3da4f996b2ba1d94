//! What an instance type is and costs: its shape from DescribeInstanceTypes
//! (cached for good: a type's shape does not change) and its spot price from
//! DescribeSpotPriceHistory (cached for `price_cache`). On-demand prices are
//! not in the EC2 API; they come from configuration.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use flotilla_cloud::{CloudError, InstanceShape, SpotPrice};
use flotilla_domain::InstanceType;
use tokio::time::Instant;

use crate::errors::{ErrorClass, Failure};
use crate::Ec2InstanceSet;

impl Ec2InstanceSet {
    /// The vCPUs and memory of `ty`.
    pub async fn instance_shape(&self, ty: &InstanceType) -> Result<InstanceShape, CloudError> {
        if let Some(shape) = self
            .shapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ty)
        {
            return Ok(*shape);
        }
        self.count_call("DescribeInstanceTypes");
        let out = self
            .client()
            .describe_instance_types()
            .instance_types(aws_sdk_ec2::types::InstanceType::from(ty.as_str()))
            .send()
            .await
            .map_err(|e| {
                let failure = Failure::from_sdk("DescribeInstanceTypes", &e);
                match (failure.class, failure.code.as_deref()) {
                    (ErrorClass::Permanent, Some("InvalidInstanceType")) => CloudError::permanent(
                        format!("{failure}; {ty} is not an instance type of this region"),
                    ),
                    _ => self.cloud_error(&failure, None),
                }
            })?;
        self.succeeded();
        let info = out
            .instance_types()
            .iter()
            .find(|i| i.instance_type().map(|t| t.as_str()) == Some(ty.as_str()))
            .ok_or_else(|| {
                CloudError::permanent(format!(
                    "EC2 does not describe instance type {ty} in this region"
                ))
            })?;
        let vcpus = info.v_cpu_info().and_then(|v| v.default_v_cpus());
        let memory = info.memory_info().and_then(|m| m.size_in_mib());
        let (Some(vcpus), Some(memory_mib)) = (vcpus, memory) else {
            return Err(self.cloud_error(
                &Failure::malformed(
                    "DescribeInstanceTypes",
                    format!("no vCPU count or memory size for {ty}"),
                ),
                None,
            ));
        };
        let shape = InstanceShape {
            vcpus: vcpus.max(0) as u32,
            memory_mib: memory_mib.max(0) as u64,
        };
        self.shapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ty.clone(), shape);
        Ok(shape)
    }

    /// The current Linux spot price of `ty`: of the availability zones'
    /// latest prices, the highest, so a cost estimate never falls short.
    /// None: EC2 offers no spot price for the type.
    pub async fn spot_price(&self, ty: &InstanceType) -> Result<Option<SpotPrice>, CloudError> {
        if let Some((at, price)) = self
            .spot_prices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ty)
        {
            if at.elapsed() < self.config().price_cache {
                return Ok(price.clone());
            }
        }
        // With the start time now, EC2 answers the price in effect in each
        // zone: one entry per zone, well within one page.
        let now = aws_sdk_ec2::primitives::DateTime::from_secs(Utc::now().timestamp());
        self.count_call("DescribeSpotPriceHistory");
        let out = self
            .client()
            .describe_spot_price_history()
            .instance_types(aws_sdk_ec2::types::InstanceType::from(ty.as_str()))
            .product_descriptions("Linux/UNIX")
            .start_time(now)
            .send()
            .await
            .map_err(|e| {
                self.cloud_error(&Failure::from_sdk("DescribeSpotPriceHistory", &e), None)
            })?;
        self.succeeded();
        let prices = out.spot_price_history().iter().filter_map(|p| {
            Some(SpotPrice {
                usd_per_hour: p.spot_price()?.parse().ok()?,
                availability_zone: p.availability_zone()?.to_owned(),
                since: DateTime::from_timestamp(
                    p.timestamp()?.secs(),
                    p.timestamp()?.subsec_nanos(),
                )?,
            })
        });
        let highest = highest_latest(prices);
        self.spot_prices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ty.clone(), (Instant::now(), highest.clone()));
        Ok(highest)
    }
}

/// Of each availability zone's latest price, the highest.
fn highest_latest(prices: impl IntoIterator<Item = SpotPrice>) -> Option<SpotPrice> {
    let mut latest: BTreeMap<String, SpotPrice> = BTreeMap::new();
    for p in prices {
        match latest.get(&p.availability_zone) {
            Some(known) if known.since >= p.since => {}
            _ => {
                latest.insert(p.availability_zone.clone(), p);
            }
        }
    }
    latest
        .into_values()
        .max_by(|a, b| a.usd_per_hour.total_cmp(&b.usd_per_hour))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(zone: &str, usd: f64, minute: u32) -> SpotPrice {
        SpotPrice {
            usd_per_hour: usd,
            availability_zone: zone.to_owned(),
            since: DateTime::from_timestamp(1_700_000_000 + i64::from(minute) * 60, 0).unwrap(),
        }
    }

    #[test]
    fn the_highest_of_the_latest_prices_is_taken() {
        let prices = vec![
            price("us-east-1a", 0.09, 0),
            price("us-east-1a", 0.03, 5),
            price("us-east-1b", 0.04, 1),
            price("us-east-1b", 0.02, 0),
        ];
        assert_eq!(highest_latest(prices), Some(price("us-east-1b", 0.04, 1)));
        assert_eq!(highest_latest(Vec::new()), None);
    }
}
