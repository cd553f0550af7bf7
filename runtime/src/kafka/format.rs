//! Record formats of the source and sink: raw bytes, UTF-8, JSON (optionally
//! with the record's Kafka metadata) and Avro with a schema given in the job.
//! Pure functions of bytes, unit-tested without a broker.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::KafkaError;

/// A consumed record as formats see it.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Filled only for formats whose [`Deserializer::needs_headers`] is true.
    pub headers: &'a [(String, Option<Vec<u8>>)],
}

/// Turns a consumed record into a value. An `Err` is a malformed record and is
/// handled by the source's deserialization policy.
pub trait Deserializer<T>: Send + Sync + 'static {
    fn deserialize(&self, record: &RecordView<'_>) -> Result<T, String>;
    /// Whether the source must collect headers for [`RecordView::headers`]
    /// (costs an allocation per record, so only when asked).
    fn needs_headers(&self) -> bool {
        false
    }
}

/// Turns a value into bytes for the sink (key or value).
pub trait Serializer<T>: Send + Sync + 'static {
    fn serialize(&self, value: &T) -> Result<Vec<u8>, String>;
    /// As a key: `None` writes the record without a key (Kafka's null key).
    fn serialize_key(&self, value: &T) -> Result<Option<Vec<u8>>, String> {
        self.serialize(value).map(Some)
    }
}

fn payload<'a>(r: &RecordView<'a>) -> Result<&'a [u8], String> {
    r.payload
        .ok_or_else(|| "record has no value (a tombstone)".to_string())
}

/// The value's bytes as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

impl Deserializer<Vec<u8>> for Raw {
    fn deserialize(&self, r: &RecordView<'_>) -> Result<Vec<u8>, String> {
        Ok(r.payload.unwrap_or_default().to_vec())
    }
}

impl Serializer<Vec<u8>> for Raw {
    fn serialize(&self, v: &Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(v.clone())
    }
}

/// The value as UTF-8 text; invalid UTF-8 is a malformed record.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8;

impl Deserializer<String> for Utf8 {
    fn deserialize(&self, r: &RecordView<'_>) -> Result<String, String> {
        std::str::from_utf8(payload(r)?)
            .map(str::to_string)
            .map_err(|e| format!("value is not valid UTF-8: {e}"))
    }
}

impl Serializer<String> for Utf8 {
    fn serialize(&self, v: &String) -> Result<Vec<u8>, String> {
        Ok(v.as_bytes().to_vec())
    }
}

/// JSON via serde. With [`Json::with_metadata`], the record's topic,
/// partition, offset, timestamp, key and headers are added to the JSON object
/// under the given field before it is turned into `T`.
pub struct Json<T> {
    metadata_field: Option<String>,
    _p: PhantomData<fn() -> T>,
}

impl<T> Clone for Json<T> {
    fn clone(&self) -> Self {
        Json {
            metadata_field: self.metadata_field.clone(),
            _p: PhantomData,
        }
    }
}

impl<T> Default for Json<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Json<T> {
    pub fn new() -> Self {
        Json {
            metadata_field: None,
            _p: PhantomData,
        }
    }
    /// Adds `{"topic", "partition", "offset", "timestamp", "key", "headers"}`
    /// under `field` (keys and header values as UTF-8 text when they are, else
    /// as arrays of bytes).
    pub fn with_metadata(field: impl Into<String>) -> Self {
        Json {
            metadata_field: Some(field.into()),
            _p: PhantomData,
        }
    }
}

fn bytes_json(b: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(b) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => serde_json::Value::Array(b.iter().map(|x| (*x).into()).collect()),
    }
}

/// The metadata object [`Json::with_metadata`] adds.
pub fn metadata_json(r: &RecordView<'_>) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (k, v) in r.headers {
        headers.insert(
            k.clone(),
            v.as_deref()
                .map(bytes_json)
                .unwrap_or(serde_json::Value::Null),
        );
    }
    serde_json::json!({
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": r.key.map(bytes_json),
        "headers": headers,
    })
}

impl<T: DeserializeOwned + 'static> Deserializer<T> for Json<T> {
    fn deserialize(&self, r: &RecordView<'_>) -> Result<T, String> {
        let bytes = payload(r)?;
        match &self.metadata_field {
            None => serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}")),
            Some(field) => {
                let mut v: serde_json::Value =
                    serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
                let obj = v.as_object_mut().ok_or_else(|| {
                    "JSON value is not an object; cannot add metadata".to_string()
                })?;
                obj.insert(field.clone(), metadata_json(r));
                serde_json::from_value(v).map_err(|e| format!("JSON does not fit the type: {e}"))
            }
        }
    }
    fn needs_headers(&self) -> bool {
        self.metadata_field.is_some()
    }
}

impl<T: Serialize + 'static> Serializer<T> for Json<T> {
    fn serialize(&self, v: &T) -> Result<Vec<u8>, String> {
        serde_json::to_vec(v).map_err(|e| e.to_string())
    }
}

/// Avro binary datums (no container header, no schema-registry prefix) with a
/// schema given in the job, converted to and from `T` through serde.
pub struct Avro<T> {
    schema: Arc<apache_avro::Schema>,
    _p: PhantomData<fn() -> T>,
}

impl<T> Clone for Avro<T> {
    fn clone(&self) -> Self {
        Avro {
            schema: self.schema.clone(),
            _p: PhantomData,
        }
    }
}

impl<T> Avro<T> {
    /// Parses the schema (JSON text); a bad schema is a configuration error.
    pub fn new(schema_json: &str) -> Result<Self, KafkaError> {
        let schema = apache_avro::Schema::parse_str(schema_json)
            .map_err(|e| KafkaError::Config(format!("invalid Avro schema: {e}")))?;
        Ok(Avro {
            schema: Arc::new(schema),
            _p: PhantomData,
        })
    }
}

impl<T: DeserializeOwned + 'static> Deserializer<T> for Avro<T> {
    fn deserialize(&self, r: &RecordView<'_>) -> Result<T, String> {
        let mut bytes = payload(r)?;
        let value = apache_avro::from_avro_datum(&self.schema, &mut bytes, None)
            .map_err(|e| format!("invalid Avro datum: {e}"))?;
        if !bytes.is_empty() {
            return Err(format!(
                "invalid Avro datum: {} trailing bytes after the record",
                bytes.len()
            ));
        }
        apache_avro::from_value(&value)
            .map_err(|e| format!("Avro value does not fit the type: {e}"))
    }
}

impl<T: Serialize + 'static> Serializer<T> for Avro<T> {
    fn serialize(&self, v: &T) -> Result<Vec<u8>, String> {
        let value = apache_avro::to_value(v)
            .and_then(|x| x.resolve(&self.schema))
            .map_err(|e| format!("value does not fit the Avro schema: {e}"))?;
        apache_avro::to_avro_datum(&self.schema, value).map_err(|e| e.to_string())
    }
}

/// A serializing closure.
pub type SerializeFn<T> = Arc<dyn Fn(&T) -> Result<Vec<u8>, String> + Send + Sync>;

/// Serializes with a closure (e.g. a key extracted from the value).
pub struct FnSerializer<T>(pub SerializeFn<T>);

impl<T: 'static> Serializer<T> for FnSerializer<T> {
    fn serialize(&self, v: &T) -> Result<Vec<u8>, String> {
        (self.0)(v)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    fn view<'a>(
        payload: Option<&'a [u8]>,
        headers: &'a [(String, Option<Vec<u8>>)],
    ) -> RecordView<'a> {
        RecordView {
            topic: "t",
            partition: 2,
            offset: 7,
            timestamp: Some(1000),
            key: Some(b"k1"),
            payload,
            headers,
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u64,
        item: String,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct OrderWithMeta {
        id: u64,
        meta: serde_json::Value,
    }

    #[test]
    fn raw_and_utf8() {
        assert_eq!(
            Raw.deserialize(&view(Some(&[0, 255]), &[])).unwrap(),
            vec![0, 255]
        );
        assert_eq!(Utf8.deserialize(&view(Some(b"hi"), &[])).unwrap(), "hi");
        let e = Utf8
            .deserialize(&view(Some(&[0xff, 0xfe]), &[]))
            .unwrap_err();
        assert!(e.contains("not valid UTF-8"), "{e}");
        let e = Utf8.deserialize(&view(None, &[])).unwrap_err();
        assert!(e.contains("tombstone"), "{e}");
        assert_eq!(Utf8.serialize(&"x".to_string()).unwrap(), b"x");
    }

    #[test]
    fn json_round_trip_and_errors() {
        let j = Json::<Order>::new();
        let bytes = j
            .serialize(&Order {
                id: 1,
                item: "a".into(),
            })
            .unwrap();
        assert_eq!(
            j.deserialize(&view(Some(&bytes), &[])).unwrap(),
            Order {
                id: 1,
                item: "a".into()
            }
        );
        let e = j.deserialize(&view(Some(b"{not json"), &[])).unwrap_err();
        assert!(e.starts_with("invalid JSON"), "{e}");
        let e = j
            .deserialize(&view(Some(b"{\"id\":\"x\"}"), &[]))
            .unwrap_err();
        assert!(e.starts_with("invalid JSON"), "{e}");
        assert!(!j.needs_headers());
    }

    #[test]
    fn json_with_metadata() {
        let j = Json::<OrderWithMeta>::with_metadata("meta");
        assert!(j.needs_headers());
        let headers = vec![
            ("h".to_string(), Some(b"v".to_vec())),
            ("bin".to_string(), Some(vec![0xff])),
            ("none".to_string(), None),
        ];
        let o = j.deserialize(&view(Some(b"{\"id\":3}"), &headers)).unwrap();
        assert_eq!(o.id, 3);
        assert_eq!(
            o.meta,
            serde_json::json!({
                "topic": "t", "partition": 2, "offset": 7, "timestamp": 1000, "key": "k1",
                "headers": {"h": "v", "bin": [255], "none": null}
            })
        );
        let e = j.deserialize(&view(Some(b"[1]"), &headers)).unwrap_err();
        assert!(e.contains("not an object"), "{e}");
    }

    const SCHEMA: &str = r#"{"type":"record","name":"Order","fields":[
        {"name":"id","type":"long"},{"name":"item","type":"string"}]}"#;

    #[test]
    fn avro_round_trip_and_errors() {
        let a = Avro::<Order>::new(SCHEMA).unwrap();
        let o = Order {
            id: 42,
            item: "pen".into(),
        };
        let bytes = a.serialize(&o).unwrap();
        assert_eq!(a.deserialize(&view(Some(&bytes), &[])).unwrap(), o);
        // Truncated: either the datum or its conversion fails, never a value.
        let e = a.deserialize(&view(Some(&bytes[..2]), &[])).unwrap_err();
        assert!(e.contains("Avro"), "{e}");
        let mut longer = bytes.clone();
        longer.push(1);
        let e = a.deserialize(&view(Some(&longer), &[])).unwrap_err();
        assert!(e.contains("trailing bytes"), "{e}");
        assert!(Avro::<Order>::new("{\"type\":\"nope\"}").is_err());
        #[derive(Serialize)]
        struct Wrong {
            x: bool,
        }
        let w = Avro::<Wrong>::new(SCHEMA).unwrap();
        let e = w.serialize(&Wrong { x: true }).unwrap_err();
        assert!(e.contains("does not fit the Avro schema"), "{e}");
    }
}
