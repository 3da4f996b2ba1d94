//! A scripted EC2 endpoint on loopback, for what moto cannot do: error
//! answers (throttling, quotas, capacity, auth), partial fulfilment, lax
//! filtering. Answers are EC2's own XML, recorded from its documentation;
//! every request is kept for assertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::IntoResponse;

/// One API request: its `Action` and the other form parameters.
#[derive(Debug, Clone)]
pub struct Request {
    pub action: String,
    pub params: BTreeMap<String, String>,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The values of a list parameter (`Prefix.1`, `Prefix.2`, …).
    pub fn list(&self, prefix: &str) -> Vec<&str> {
        (1..)
            .map_while(|n| self.param(&format!("{prefix}.{n}")))
            .collect()
    }

    /// The tags of the TagSpecification for `resource_type`.
    pub fn tag_spec(&self, resource_type: &str) -> BTreeMap<String, String> {
        for n in 1.. {
            let Some(rt) = self.param(&format!("TagSpecification.{n}.ResourceType")) else {
                break;
            };
            if rt == resource_type {
                let mut tags = BTreeMap::new();
                for t in 1.. {
                    let key = format!("TagSpecification.{n}.Tag.{t}.Key");
                    let value = format!("TagSpecification.{n}.Tag.{t}.Value");
                    let Some(k) = self.param(&key) else { break };
                    tags.insert(k.to_owned(), self.param(&value).unwrap_or("").to_owned());
                }
                return tags;
            }
        }
        BTreeMap::new()
    }

    /// The values of the DescribeInstances filter `name`.
    pub fn filter(&self, name: &str) -> Option<Vec<&str>> {
        for n in 1.. {
            let Some(f) = self.param(&format!("Filter.{n}.Name")) else {
                break;
            };
            if f == name {
                return Some(self.list(&format!("Filter.{n}.Value")));
            }
        }
        None
    }

    pub fn market(&self) -> &str {
        self.param("InstanceMarketOptions.MarketType")
            .unwrap_or("on-demand")
    }
}

/// An HTTP status and an XML body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

type Script = dyn Fn(&Request) -> Reply + Send + Sync;

pub struct FakeEc2 {
    pub endpoint: String,
    requests: Arc<Mutex<Vec<Request>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEc2 {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeEc2 {
    /// Serves `script`'s answer to every request.
    pub async fn start(script: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> FakeEc2 {
        let script: Arc<Script> = Arc::new(script);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&requests);
        let app = axum::Router::new().fallback(move |body: String| {
            let script = Arc::clone(&script);
            let kept = Arc::clone(&kept);
            async move {
                let params = parse_form(&body);
                let request = Request {
                    action: params.get("Action").cloned().unwrap_or_default(),
                    params,
                };
                kept.lock().unwrap().push(request.clone());
                let reply = script(&request);
                (
                    StatusCode::from_u16(reply.status).unwrap(),
                    [("content-type", "text/xml;charset=UTF-8")],
                    reply.body,
                )
                    .into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeEc2 {
            endpoint,
            requests,
            server,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn actions(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.action).collect()
    }

    pub fn requests_of(&self, action: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.action == action)
            .collect()
    }
}

fn parse_form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

pub const NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// EC2's error answer.
pub fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply {
        status,
        body: format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>"
        ),
    }
}

/// An instance as the fake describes it.
#[derive(Debug, Clone)]
pub struct FakeInstance {
    pub id: String,
    pub state: &'static str,
    pub instance_type: String,
    pub private_ip: String,
    pub public_ip: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// As EC2 writes it: `2026-01-02T03:04:05.000Z`.
    pub launch_time: String,
}

impl FakeInstance {
    pub fn new(id: &str, state: &'static str, tags: &[(&str, &str)]) -> Self {
        Self {
            id: id.to_owned(),
            state,
            instance_type: "t3.micro".to_owned(),
            private_ip: "10.0.0.1".to_owned(),
            public_ip: None,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            launch_time: "2026-01-02T03:04:05.000Z".to_owned(),
        }
    }

    pub fn xml(&self) -> String {
        let code = match self.state {
            "pending" => 0,
            "running" => 16,
            "shutting-down" => 32,
            "terminated" => 48,
            "stopping" => 64,
            _ => 80,
        };
        let tags: String = self
            .tags
            .iter()
            .map(|(k, v)| format!("<item><key>{k}</key><value>{v}</value></item>"))
            .collect();
        format!(
            "<item><instanceId>{id}</instanceId><imageId>ami-12c6146b</imageId>\
             <instanceState><code>{code}</code><name>{state}</name></instanceState>\
             <instanceType>{ty}</instanceType><launchTime>{launched}</launchTime>\
             <privateIpAddress>{ip}</privateIpAddress>{public}<tagSet>{tags}</tagSet></item>",
            id = self.id,
            state = self.state,
            ty = self.instance_type,
            launched = self.launch_time,
            ip = self.private_ip,
            public = self
                .public_ip
                .as_ref()
                .map(|ip| format!("<ipAddress>{ip}</ipAddress>"))
                .unwrap_or_default(),
        )
    }
}

/// A RunInstances answer with `count` new pending instances.
pub fn run_instances(request: &Request, count: usize) -> Reply {
    let ty = request.param("InstanceType").unwrap_or("t3.micro");
    let items: String = (0..count)
        .map(|n| {
            let mut i =
                FakeInstance::new(&format!("i-{:017x}", rand_id() + n as u64), "pending", &[]);
            i.instance_type = ty.to_owned();
            i.xml()
        })
        .collect();
    Reply {
        status: 200,
        body: format!(
            "<RunInstancesResponse xmlns=\"{NS}\"><requestId>r</requestId><reservationId>r-1</reservationId>\
             <ownerId>123456789012</ownerId><groupSet/><instancesSet>{items}</instancesSet></RunInstancesResponse>"
        ),
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0x1000);
    NEXT.fetch_add(0x100, Ordering::Relaxed)
}

/// A DescribeInstances answer with `instances` in one reservation.
pub fn describe_instances(instances: &[FakeInstance]) -> Reply {
    let items: String = instances.iter().map(FakeInstance::xml).collect();
    let reservations = if instances.is_empty() {
        String::new()
    } else {
        format!(
            "<item><reservationId>r-1</reservationId><ownerId>123456789012</ownerId>\
             <groupSet/><instancesSet>{items}</instancesSet></item>"
        )
    };
    Reply {
        status: 200,
        body: format!(
            "<DescribeInstancesResponse xmlns=\"{NS}\"><requestId>r</requestId>\
             <reservationSet>{reservations}</reservationSet></DescribeInstancesResponse>"
        ),
    }
}

pub fn terminate_instances(request: &Request) -> Reply {
    let items: String = request
        .list("InstanceId")
        .iter()
        .map(|id| {
            format!(
                "<item><instanceId>{id}</instanceId><currentState><code>32</code><name>shutting-down</name></currentState>\
                 <previousState><code>16</code><name>running</name></previousState></item>"
            )
        })
        .collect();
    Reply {
        status: 200,
        body: format!(
            "<TerminateInstancesResponse xmlns=\"{NS}\"><requestId>r</requestId>\
             <instancesSet>{items}</instancesSet></TerminateInstancesResponse>"
        ),
    }
}

pub fn create_tags() -> Reply {
    Reply {
        status: 200,
        body: format!(
            "<CreateTagsResponse xmlns=\"{NS}\"><requestId>r</requestId><return>true</return></CreateTagsResponse>"
        ),
    }
}
