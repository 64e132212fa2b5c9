//! The data store: a JSON document the platform writes over the API (`PUT`,
//! `PATCH`, `GET /mmds`, or `--metadata` at start) for the guest to read. Its
//! size is capped (`--mmds-size-limit`) because it lives in ember's memory for
//! as long as the VM does.

use serde_json::{Map, Value};

/// Firecracker's default cap: its API's largest request body.
pub const DEFAULT_SIZE_LIMIT: usize = 51_200;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A `PATCH` before any `PUT` (Firecracker's wording).
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    /// The document, as JSON, would exceed `--mmds-size-limit`.
    #[error("the MMDS data store would take {size} bytes, over its limit of {limit} (--mmds-size-limit)")]
    TooLarge { size: usize, limit: usize },
}

/// The data store: empty until the first `PUT`.
#[derive(Debug, Clone, PartialEq)]
pub struct MmdsStore {
    data: Option<Value>,
    size_limit: usize,
}

impl Default for MmdsStore {
    fn default() -> Self {
        MmdsStore::new(DEFAULT_SIZE_LIMIT)
    }
}

impl MmdsStore {
    /// An empty store whose document may take up to `size_limit` bytes as JSON.
    pub fn new(size_limit: usize) -> Self {
        MmdsStore {
            data: None,
            size_limit,
        }
    }

    /// Replaces the document.
    pub fn put(&mut self, data: Value) -> Result<(), Error> {
        self.check_size(&data)?;
        self.data = Some(data);
        Ok(())
    }

    /// Merges `patch` into the document as a JSON merge patch (RFC 7396):
    /// members set to `null` are removed, objects merge, anything else
    /// replaces. The document is unchanged if the result would be too large.
    pub fn patch(&mut self, patch: Value) -> Result<(), Error> {
        let mut data = self.data.clone().ok_or(Error::NotInitialized)?;
        merge_patch(&mut data, patch);
        self.check_size(&data)?;
        self.data = Some(data);
        Ok(())
    }

    /// The document, if a `PUT` set one.
    pub fn data(&self) -> Option<&Value> {
        self.data.as_ref()
    }

    /// The document; `{}` before the first `PUT`, as Firecracker answers.
    pub fn value(&self) -> Value {
        self.data
            .clone()
            .unwrap_or_else(|| Value::Object(Map::new()))
    }

    fn check_size(&self, data: &Value) -> Result<(), Error> {
        // Serializing a `Value` cannot fail: its keys are strings.
        let size = serde_json::to_vec(data).map_or(usize::MAX, |bytes| bytes.len());
        if size > self.size_limit {
            return Err(Error::TooLarge {
                size,
                limit: self.size_limit,
            });
        }
        Ok(())
    }
}

/// RFC 7396's algorithm. Recursion follows the patch's nesting, which the
/// API's body limit and serde_json's depth limit (128) bound.
fn merge_patch(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(&key);
            } else {
                merge_patch(target.entry(key).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_empty_store_reads_as_an_empty_object_and_refuses_patches() {
        let mut store = MmdsStore::default();
        assert_eq!(store.value(), json!({}));
        assert_eq!(store.patch(json!({"a": 1})), Err(Error::NotInitialized));
        assert_eq!(store.value(), json!({}));
    }

    #[test]
    fn put_replaces_and_patch_merges_as_rfc_7396_says() {
        let mut store = MmdsStore::default();
        store
            .put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "tags": ["a"]}}, "gone": 1}))
            .expect("a small document");
        store
            .patch(json!({"latest": {"meta-data": {"ami-id": "ami-2", "tags": null, "new": {"x": 1}}}, "gone": null, "s": "v"}))
            .expect("a small patch");
        assert_eq!(
            store.value(),
            json!({"latest": {"meta-data": {"ami-id": "ami-2", "new": {"x": 1}}}, "s": "v"})
        );
        store
            .patch(json!("a string replaces everything"))
            .expect("a patch");
        assert_eq!(store.value(), json!("a string replaces everything"));
        store.put(json!([1, 2])).expect("any JSON value");
        assert_eq!(store.value(), json!([1, 2]));
    }

    #[test]
    fn the_size_limit_holds_for_puts_and_patches() {
        let mut store = MmdsStore::new(20);
        assert_eq!(
            store.put(json!({"key": "a value that is too long"})),
            Err(Error::TooLarge {
                size: 34,
                limit: 20
            })
        );
        store.put(json!({"k": "short"})).expect("17 bytes");
        assert!(matches!(
            store.patch(json!({"k2": "pushes it over"})),
            Err(Error::TooLarge { limit: 20, .. })
        ));
        assert_eq!(store.value(), json!({"k": "short"}), "unchanged on error");
    }
}
