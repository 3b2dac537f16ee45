//! Services as the agent plans them, for the proxy's tests.
#![allow(dead_code)] // each test binary uses its own subset

use serde_json::json;
use weft_proxy::model::{endpoints_by_port, service_info};
use weft_proxy::plan::plan_service;
use weft_proxy::{NodeContext, ServiceKey, ServiceRules};

pub fn ctx() -> NodeContext {
    NodeContext {
        node: "node-1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        nodeport_addresses: weft_proxy::plan::NodePortAddresses::EveryLocal,
        zone: None,
        service_cidrs: vec![],
    }
}

pub fn planned(
    name: &str,
    spec: serde_json::Value,
    endpoints: &[(&str, &str)],
) -> (ServiceKey, ServiceRules) {
    let mut svc = json!({"metadata": {"namespace": "demo", "name": name}, "spec": spec});
    if spec_type(&svc) == "LoadBalancer" {
        svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.18.0.240"}]}});
    }
    let svc = serde_json::from_value(svc).unwrap();
    let info = service_info(&svc).unwrap();
    let protocol = info.ports[0].protocol.nft().to_uppercase();
    let eps: Vec<_> = endpoints
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}))
        .collect();
    let slice = serde_json::from_value(json!({
        "metadata": {"namespace": "demo", "name": format!("{name}-1")},
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": 8080, "protocol": protocol}],
        "endpoints": eps
    }))
    .unwrap();
    let rules = plan_service(&info, &endpoints_by_port(&[&slice]), &ctx());
    (info.key, rules)
}

fn spec_type(svc: &serde_json::Value) -> String {
    svc["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string()
}
