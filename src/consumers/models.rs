//! Which properties users and applications take: EG's `models/users.json` and
//! `models/applications.json` when the config directory has them, else Kargo's variant (users
//! need only `username`; applications take `name`, `redirectUri` and `scopes`). A small JSON
//! Schema subset is checked: `required`, property `type`, `additionalProperties: false`, and
//! on creation the `email` and `uri` formats (EG's own models name them) as ajv 6 checks them
//! by default (its `fast` forms).

use std::path::Path;

use serde_json::{Map, Value};

#[derive(Clone, Debug)]
pub struct Model {
    required: Vec<String>,
    properties: Map<String, Value>,
    /// Whether properties the model does not declare are refused.
    closed: bool,
}

#[derive(Clone, Debug)]
pub struct Models {
    pub users: Model,
    pub apps: Model,
}

impl Model {
    fn from_schema(schema: &Value, closed_by_default: bool) -> Model {
        Model {
            required: schema["required"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            properties: schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            closed: schema["additionalProperties"]
                .as_bool()
                .map_or(closed_by_default, |a| !a),
        }
    }

    pub fn declares(&self, prop: &str) -> bool {
        self.properties.contains_key(prop)
    }

    /// Checks `body` (new object when `creating`); the first problem, as EG reports it.
    pub fn validate(&self, body: &Map<String, Value>, creating: bool) -> Result<(), String> {
        if creating {
            // `null` is a value given (ajv's `required`), stored as nothing (see `type`).
            for r in &self.required {
                if body.get(r).is_none() {
                    return Err(format!("data should have required property '{r}'"));
                }
            }
        }
        for (k, v) in body {
            let Some(def) = self.properties.get(k) else {
                if self.closed {
                    return Err("one or more property is invalid".into());
                }
                continue;
            };
            let ok = match def["type"].as_str() {
                // ajv's `coerceTypes` (EG's): a number, a boolean or `null` is the text of it.
                Some("string") => v.is_string() || v.is_number() || v.is_boolean() || v.is_null(),
                Some("array") => v.is_array(),
                Some("boolean") => v.is_boolean(),
                Some("number") | Some("integer") => v.is_number(),
                Some("object") => v.is_object(),
                _ => true,
            };
            if !ok {
                let t = def["type"].as_str().unwrap_or("valid");
                return Err(format!("data.{k} should be {t}"));
            }
            if let (true, Some(f)) = (creating, def["format"].as_str()) {
                // (`null` as the nothing ajv coerces it to, which no format takes.)
                let text = match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
                    Value::Null => Some(String::new()),
                    _ => None,
                };
                if text.is_some_and(|t| !format_holds(f, &t)) {
                    return Err(format!("data.{k} should match format \"{f}\""));
                }
            }
            if let (Some(items), Some(list)) = (def["items"]["type"].as_str(), v.as_array()) {
                if items == "string" && !list.iter().all(Value::is_string) {
                    return Err(format!("data.{k} should be an array of strings"));
                }
            }
        }
        Ok(())
    }
}

/// Whether `text` has format `f`: `email` and `uri` as ajv 6's `fast` mode has them (its
/// letters ASCII ones: JavaScript's case folding without `u` takes no `ſ` for an `s`); other
/// formats are not checked.
fn format_holds(f: &str, text: &str) -> bool {
    use std::sync::LazyLock;
    static EMAIL: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(
            r"(?i-u)^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$",
        )
        .expect("the email format")
    });
    static URI: LazyLock<regex::Regex> = LazyLock::new(|| {
        // JavaScript's `\s`: U+FEFF is one, U+0085 is not.
        regex::Regex::new(
            r"^(?i-u:[a-z][a-z0-9+\-.]*:)(?:/?/)?[^\t\n\x0B\x0C\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}\x{FEFF}]*$",
        )
        .expect("the uri format")
    });
    match f {
        "email" => EMAIL.is_match(text),
        "uri" => URI.is_match(text),
        _ => true,
    }
}

impl Models {
    /// Kargo's models.
    pub fn kargo() -> Models {
        Models {
            users: Model::from_schema(
                &serde_json::json!({
                    "properties": {"username": {"type": "string"}, "firstname": {"type": "string"},
                                   "lastname": {"type": "string"}, "email": {"type": "string"},
                                   "redirectUri": {"type": "string"}},
                    "required": ["username"]
                }),
                false,
            ),
            apps: Model::from_schema(
                &serde_json::json!({
                    "properties": {"name": {"type": "string"}, "redirectUri": {"type": "string"},
                                   "scopes": {"type": "array", "items": {"type": "string"}}},
                    "required": ["name"]
                }),
                true,
            ),
        }
    }

    /// The models of a config directory stack (`models/*.json`, the last directory's first),
    /// Kargo's where a file is missing.
    pub fn load(
        config_dirs: &crate::config::ConfigDirs,
    ) -> Result<Models, crate::config::error::ConfigError> {
        use crate::config::error::{ConfigError, Pos};
        let mut models = Models::kargo();
        let read = |name: &str| -> Result<Option<Value>, ConfigError> {
            let Some(p) = config_dirs.resolve(&Path::new("models").join(name)) else {
                return Ok(None);
            };
            let file: std::sync::Arc<str> = p.display().to_string().into();
            let bytes = std::fs::read(&p).map_err(|e| {
                ConfigError::new(
                    &Pos::file_start(&file),
                    format!("cannot read the file: {e}"),
                )
            })?;
            let text = crate::config::text_of(&bytes, &file);
            serde_json::from_str(&text).map(Some).map_err(|e| {
                ConfigError::new(
                    &Pos::new(&file, e.line(), e.column()),
                    format!("invalid JSON: {e}"),
                )
            })
        };
        if let Some(users) = read("users.json")? {
            models.users = Model::from_schema(&users, false);
        }
        if let Some(apps) = read("applications.json")? {
            models.apps = Model::from_schema(&apps, true);
        }
        Ok(models)
    }
}
