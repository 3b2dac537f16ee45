//! Network configuration lists (`*.conflist`) as a runtime reads them: the
//! list's version (the highest of `cniVersions` that weft-cni speaks, else
//! `cniVersion`) and `name` are copied into each plugin entry, and
//! `runtimeConfig` is filled only with the capabilities the entry declares.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ConflistError {
    #[error("the conflist is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the conflist has no {0:?}")]
    Missing(&'static str),
}

#[derive(Debug, Clone)]
pub struct Conflist {
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<Value>,
}

impl Conflist {
    pub fn parse(text: &str) -> Result<Self, ConflistError> {
        let v: Value = serde_json::from_str(text)?;
        let field = |k: &'static str| {
            v[k].as_str()
                .map(String::from)
                .ok_or(ConflistError::Missing(k))
        };
        // CNI 1.1 version negotiation: the newest version both sides speak.
        let negotiated = v["cniVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().and_then(|s| crate::spec::Version::parse(s).ok()))
            .max();
        let cni_version = match negotiated {
            Some(version) => version.as_str().to_string(),
            None => field("cniVersion")?,
        };
        Ok(Conflist {
            cni_version,
            name: field("name")?,
            plugins: v["plugins"]
                .as_array()
                .cloned()
                .ok_or(ConflistError::Missing("plugins"))?,
        })
    }

    /// The configuration plugin `index` receives, given the runtime's
    /// capability arguments (e.g. `{"portMappings": [...]}`).
    pub fn plugin_config(&self, index: usize, runtime: &Map<String, Value>) -> Option<Value> {
        let mut conf = self.plugins.get(index)?.clone();
        let obj = conf.as_object_mut()?;
        obj.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        obj.insert("name".into(), Value::String(self.name.clone()));
        let declared = obj.remove("capabilities").unwrap_or(Value::Null);
        let granted: Map<String, Value> = runtime
            .iter()
            .filter(|(k, _)| declared[k.as_str()].as_bool() == Some(true))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !granted.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(granted));
        }
        Some(conf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_conflist_yields_a_plugin_config() {
        let list = Conflist::parse(include_str!("../../../examples/10-weft.conflist")).unwrap();
        let mut rt = Map::new();
        rt.insert(
            "portMappings".into(),
            serde_json::json!([{"hostPort": 80, "containerPort": 8080}]),
        );
        rt.insert("bandwidth".into(), serde_json::json!({}));
        let conf = list.plugin_config(0, &rt).unwrap();
        assert_eq!(conf["name"], "weft");
        assert_eq!(conf["cniVersion"], "1.1.0");
        assert!(conf.get("capabilities").is_none());
        assert!(conf["runtimeConfig"]["portMappings"].is_array());
        assert!(
            conf["runtimeConfig"].get("bandwidth").is_none(),
            "undeclared capability passed on"
        );
        // And weft-cni accepts it.
        let parsed = crate::spec::NetConf::parse(conf.to_string().as_bytes()).unwrap();
        assert!(crate::plan::Network::plan(&parsed, crate::plan::Ranges::Required).is_ok());
    }

    #[test]
    fn cni_versions_negotiates_the_newest_known() {
        let list = Conflist::parse(
            r#"{"cniVersion":"1.0.0","cniVersions":["1.0.0","1.1.0","9.0.0"],"name":"n","plugins":[]}"#,
        )
        .unwrap();
        assert_eq!(list.cni_version, "1.1.0");
        let list = Conflist::parse(r#"{"cniVersion":"0.4.0","name":"n","plugins":[]}"#).unwrap();
        assert_eq!(list.cni_version, "0.4.0");
    }
}
