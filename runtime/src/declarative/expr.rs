//! CEL expressions, compiled once when the job is built and evaluated per
//! record. A record's fields are CEL variables (`amount > 10`); the whole
//! record is also bound as `record` (`has(record.coupon)`). Only the variables
//! an expression references are bound, and a plain field path (`user`,
//! `order.id`) skips the interpreter altogether: most keys and aggregated
//! values are such paths, and this keeps their per-record cost to a lookup.

use std::sync::{Arc, OnceLock};

use super::value::Value;

/// The variable that holds the whole record.
pub const RECORD_VAR: &str = "record";

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// A field path, looked up directly.
    Path(Arc<[String]>),
    Cel {
        program: Arc<cel::Program>,
        vars: Arc<[String]>,
    },
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

fn env() -> &'static Arc<cel::Env> {
    static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(cel::Env::stdlib()))
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !matches!(s, "true" | "false" | "null" | "in")
}

impl Expr {
    /// Compiles `source`; the error is the CEL parser's message.
    pub fn compile(source: &str) -> Result<Expr, String> {
        let trimmed = source.trim();
        if trimmed.is_empty() {
            return Err("empty expression".into());
        }
        let parts: Vec<&str> = trimmed.split('.').collect();
        if parts.iter().all(|p| is_ident(p)) {
            let mut path: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
            if path[0] == RECORD_VAR {
                path.remove(0);
            }
            if !path.is_empty() {
                return Ok(Expr {
                    source: trimmed.into(),
                    kind: Kind::Path(path.into()),
                });
            }
        }
        let program = cel::Program::compile(trimmed).map_err(|e| {
            let msg = e.to_string();
            format!("invalid CEL: {}", msg.trim())
        })?;
        let mut vars: Vec<String> = program
            .references()
            .variables()
            .into_iter()
            .map(str::to_string)
            .collect();
        vars.sort();
        vars.dedup();
        Ok(Expr {
            source: trimmed.into(),
            kind: Kind::Cel {
                program: Arc::new(program),
                vars: vars.into(),
            },
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Top-level record fields this expression reads (for type checks), or
    /// None when it reads the whole record.
    pub fn fields(&self) -> Option<Vec<String>> {
        match &self.kind {
            Kind::Path(p) => Some(vec![p[0].clone()]),
            Kind::Cel { vars, .. } => {
                if vars.iter().any(|v| v == RECORD_VAR) {
                    None
                } else {
                    Some(vars.to_vec())
                }
            }
        }
    }

    /// Evaluates against a record. Missing fields are null.
    pub fn eval(&self, record: &Value) -> Result<Value, String> {
        match &self.kind {
            Kind::Path(path) => {
                let mut v = record;
                for p in path.iter() {
                    match v.get(p) {
                        Some(x) => v = x,
                        None => return Ok(Value::Null),
                    }
                }
                Ok(v.clone())
            }
            Kind::Cel { program, vars } => {
                let mut ctx = cel::Context::with_env(env().clone());
                for var in vars.iter() {
                    let v = if var == RECORD_VAR {
                        record.to_cel()
                    } else {
                        record
                            .get(var)
                            .map(Value::to_cel)
                            .unwrap_or(cel::Value::Null)
                    };
                    ctx.add_variable_from_value(var.clone(), v);
                }
                let out = program
                    .execute(&ctx)
                    .map_err(|e| format!("`{}`: {e}", self.source))?;
                Value::from_cel(&out).map_err(|e| format!("`{}`: {e}", self.source))
            }
        }
    }

    /// Evaluates a predicate; anything but a bool is an error.
    pub fn eval_bool(&self, record: &Value) -> Result<bool, String> {
        match self.eval(record)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!(
                "`{}` must give a bool, gave {} ({})",
                self.source,
                other.type_name(),
                other
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declarative::value::record;

    #[test]
    fn paths_and_cel_give_the_same_results() {
        let r = record([
            ("user", Value::String("u1".into())),
            ("amount", Value::Int(12)),
            ("order", record([("id", Value::Int(7))])),
        ]);
        assert_eq!(
            Expr::compile("user").unwrap().eval(&r).unwrap(),
            Value::String("u1".into())
        );
        assert_eq!(
            Expr::compile("order.id").unwrap().eval(&r).unwrap(),
            Value::Int(7)
        );
        assert_eq!(
            Expr::compile("record.order.id").unwrap().eval(&r).unwrap(),
            Value::Int(7)
        );
        assert_eq!(
            Expr::compile("missing").unwrap().eval(&r).unwrap(),
            Value::Null
        );
        assert_eq!(
            Expr::compile("amount * 2 + order.id")
                .unwrap()
                .eval(&r)
                .unwrap(),
            Value::Int(31)
        );
        assert!(
            Expr::compile("amount > 10 && user == 'u1'")
                .unwrap()
                .eval_bool(&r)
                .unwrap()
        );
        assert!(
            Expr::compile("has(record.order)")
                .unwrap()
                .eval_bool(&r)
                .unwrap()
        );
        assert_eq!(
            Expr::compile("[1, 2, 3].map(x, x * amount)")
                .unwrap()
                .eval(&r)
                .unwrap(),
            Value::List(vec![Value::Int(12), Value::Int(24), Value::Int(36)])
        );
    }

    #[test]
    fn compile_and_runtime_errors_are_messages() {
        let e = Expr::compile("amount >").unwrap_err();
        assert!(e.starts_with("invalid CEL"), "{e}");
        let r = record([("amount", Value::String("x".into()))]);
        let e = Expr::compile("amount > 10")
            .unwrap()
            .eval_bool(&r)
            .unwrap_err();
        assert!(e.starts_with("`amount > 10`: "), "{e}");
        let e = Expr::compile("amount").unwrap().eval_bool(&r).unwrap_err();
        assert_eq!(e, "`amount` must give a bool, gave string (\"x\")");
    }

    #[test]
    fn field_references_are_known() {
        assert_eq!(
            Expr::compile("a + b.c").unwrap().fields(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            Expr::compile("record.a").unwrap().fields(),
            Some(vec!["a".to_string()])
        );
        assert_eq!(Expr::compile("size(record) > 1").unwrap().fields(), None);
    }
}
