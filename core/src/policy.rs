//! Every algorithm as a value: [`Algorithm`] (which one) and [`Policy`] (one with validated
//! figures), both generated from the one list at the end of this file, and everything else
//! derived from each algorithm's [`Describe`]: the text form `fixed:10:1s`,
//! `sliding:100:1m`, `token:100:10:1s` (figures in the order of the command's arguments,
//! durations as [`Millis`] writes them) that flags and stores hold; the JSON form
//! `{"algorithm": "sliding", "limit": 100, "window": "1m"}` (feature `serde`: a field per
//! argument, named as `COMMAND DOCS` names it, a number for a duration being seconds, an
//! option left out taking its default); and the command arguments a client sends.

use std::ffi::CStr;
use std::fmt;
use std::str::FromStr;

use crate::args::{self, ArgError, MAX_OWN, Values};
use crate::param::{Kind, Param};
use crate::time::{DurationError, Millis};
use crate::{Describe, FixedWindow, SlidingWindow, TokenBucket};

/// Declares [`Algorithm`] and [`Policy`] over the algorithms listed, and what reads them.
macro_rules! algorithms {
    ($($variant:ident($limiter:ty)),+ $(,)?) => {
        /// Which algorithm.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Algorithm {
            $($variant),+
        }

        /// An algorithm with validated figures.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Policy {
            $($variant($limiter)),+
        }

        impl Algorithm {
            /// Every algorithm, in the order of the list.
            pub const ALL: &[Algorithm] = &[$(Algorithm::$variant),+];

            /// The name (`FIXED`).
            pub fn name(self) -> &'static str {
                text(match self { $(Algorithm::$variant => <$limiter as Describe>::NAME),+ })
            }

            /// The name in lower case (`fixed`), as policies' text and JSON write it.
            pub fn id(self) -> &'static str {
                text(match self { $(Algorithm::$variant => <$limiter as Describe>::ID),+ })
            }

            /// The limiting command (`RL.FIXED`).
            pub fn command(self) -> &'static str {
                text(match self { $(Algorithm::$variant => <$limiter as Describe>::COMMAND),+ })
            }

            /// The arguments after the key.
            pub fn params(self) -> &'static [Param] {
                match self { $(Algorithm::$variant => <$limiter as Describe>::PARAMS),+ }
            }

            /// The limiter these values describe (each already in its kind's range).
            pub fn build(self, values: &Values) -> Result<Policy, ArgError> {
                match self {
                    $(Algorithm::$variant => <$limiter>::build(values).map(Policy::$variant)),+
                }
            }
        }

        impl Policy {
            pub fn algorithm(&self) -> Algorithm {
                match self { $(Policy::$variant(_) => Algorithm::$variant),+ }
            }

            /// The values of the algorithm's arguments, in their order.
            pub fn figures(&self) -> Values {
                match self { $(Policy::$variant(limiter) => limiter.figures()),+ }
            }

            /// The most units a fresh limiter admits at once: the limit, or the bucket's
            /// capacity.
            pub fn quota(&self) -> u64 {
                match self { $(Policy::$variant(limiter) => limiter.quota()),+ }
            }

            /// The time the quota applies to: the window, or the time an empty bucket takes
            /// to fill (rounded up to the millisecond).
            pub fn window(&self) -> Millis {
                match self { $(Policy::$variant(limiter) => limiter.quota_window()),+ }
            }
        }

        $(
            impl From<$limiter> for Policy {
                fn from(limiter: $limiter) -> Policy {
                    Policy::$variant(limiter)
                }
            }
        )+

        // Every algorithm's arguments fit a parse.
        const _: () = {
            $(assert!(<$limiter as Describe>::PARAMS.len() <= MAX_OWN);)+
        };
    };
}

/// A name's text (names are ASCII).
fn text(name: &'static CStr) -> &'static str {
    name.to_str().unwrap_or("?")
}

impl Algorithm {
    /// The algorithm whose [`id`](Self::id) is `id` (`fixed`).
    fn with_id(id: &str) -> Option<Algorithm> {
        (Algorithm::ALL.iter().copied()).find(|a| a.id() == id)
    }

    /// Reads figures written as text, one per argument ([`Figure`]): numbers as decimals,
    /// durations as [`Millis::parse`] reads them.
    fn read<'a>(
        self,
        figures: impl Iterator<Item = (&'static Param, Figure<'a>)>,
    ) -> Result<Policy, PolicyError> {
        let mut values = [0; MAX_OWN];
        for (value, (param, figure)) in values.iter_mut().zip(figures) {
            *value = figure.value(param)?;
        }
        let checked = (self.params().iter().zip(values))
            .try_for_each(|(param, value)| args::check(param, value).map(drop));
        checked
            .and_then(|()| self.build(&values))
            .map_err(PolicyError::Invalid)
    }
}

impl Policy {
    /// The limiting command's arguments after the key: `["100", "10", "PER", "1000ms"]`.
    pub fn args(&self) -> Vec<String> {
        args::words(self.algorithm().params(), &self.figures())
    }
}

/// One figure of a policy as written.
#[cfg_attr(not(feature = "serde"), allow(dead_code))]
enum Figure<'a> {
    Text(&'a str),
    /// A JSON number: a count, or a duration in seconds.
    Number(u64),
    /// A value in the argument's own unit (a default).
    Value(u64),
}

impl Figure<'_> {
    fn value(&self, param: &Param) -> Result<u64, PolicyError> {
        let duration = |text: &str| {
            Millis::parse(text.as_bytes())
                .map(Millis::as_u64)
                .map_err(|e| PolicyError::Duration(text.to_string(), e))
        };
        match (param.kind, self) {
            (_, Figure::Value(value)) => Ok(*value),
            (Kind::Duration, Figure::Text(text)) => duration(text),
            (Kind::Duration, Figure::Number(seconds)) => duration(&seconds.to_string()),
            (_, Figure::Number(n)) => Ok(*n),
            (_, Figure::Text(text)) => text
                .parse()
                .map_err(|_| PolicyError::NotNumber(text.to_string())),
        }
    }
}

/// Why a policy's text or JSON was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// Not the text form at all.
    Form(String),
    /// Not the JSON form: serde's word for it.
    Json(String),
    /// A count that is not a whole number.
    NotNumber(String),
    /// A duration refused.
    Duration(String, DurationError),
    /// Figures the module would refuse, with its message.
    Invalid(ArgError),
    /// The text form's figures refused: the text, and why.
    InText(String, ArgError),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Form(text) => {
                let forms = Algorithm::ALL.iter().map(|a| {
                    let figures = a.params().iter().map(|p| p.field().to_uppercase());
                    std::iter::once(a.id().to_string())
                        .chain(figures)
                        .collect::<Vec<_>>()
                        .join(":")
                });
                write!(
                    f,
                    "{text:?}: a policy is {} (such as sliding:100:1m)",
                    args::one_of(forms.collect::<Vec<_>>().iter().map(String::as_str))
                )
            }
            PolicyError::Json(detail) => {
                let forms = Algorithm::ALL.iter().map(|a| {
                    let fields = a.params().iter().map(|p| format!(", \"{}\"", p.field()));
                    format!(
                        "{{\"algorithm\": \"{}\"{}}}",
                        a.id(),
                        fields.collect::<String>()
                    )
                });
                let forms: Vec<String> = forms.collect();
                write!(
                    f,
                    "a policy is {}: {detail}",
                    args::one_of(forms.iter().map(String::as_str))
                )
            }
            PolicyError::NotNumber(text) => write!(f, "{text:?} is not a whole number"),
            PolicyError::Duration(text, DurationError::NotDuration) => {
                write!(f, "{text:?} is not {}", DurationError::NotDuration)
            }
            PolicyError::Duration(text, error) => {
                write!(f, "{text:?}: a duration must be {error}")
            }
            PolicyError::Invalid(error) => error.fmt(f),
            PolicyError::InText(text, error) => write!(f, "{text:?}: {error}"),
        }
    }
}

impl std::error::Error for PolicyError {}

impl FromStr for Policy {
    type Err = PolicyError;

    /// `fixed:10:1s`, `sliding:100:1m`, `token:100:10:1s`: the name in lower case, then each
    /// argument's value.
    fn from_str(text: &str) -> Result<Policy, PolicyError> {
        let mut parts = text.split(':');
        let algorithm = parts.next().and_then(Algorithm::with_id);
        let figures: Vec<&str> = parts.collect();
        let algorithm = match algorithm {
            Some(a) if a.params().len() == figures.len() => a,
            _ => return Err(PolicyError::Form(text.to_string())),
        };
        let figures = (algorithm.params().iter()).zip(figures.into_iter().map(Figure::Text));
        algorithm.read(figures).map_err(|e| match e {
            PolicyError::Invalid(error) => PolicyError::InText(text.to_string(), error),
            e => e,
        })
    }
}

impl fmt::Display for Policy {
    /// The text form [`FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithm = self.algorithm();
        f.write_str(algorithm.id())?;
        for (param, value) in algorithm.params().iter().zip(self.figures()) {
            match param.kind {
                Kind::Duration => write!(f, ":{}", Millis::from_millis(value))?,
                _ => write!(f, ":{value}")?,
            }
        }
        Ok(())
    }
}

#[cfg(feature = "serde")]
mod json {
    //! The JSON form, read and written by serde.

    use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde::ser::{SerializeMap, Serializer};
    use serde::{Deserialize, Serialize};

    use super::{Algorithm, Figure, Policy, PolicyError};
    use crate::param::Kind;
    use crate::time::Millis;

    impl Serialize for Policy {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let algorithm = self.algorithm();
            let params = algorithm.params();
            let mut map = serializer.serialize_map(Some(1 + params.len()))?;
            map.serialize_entry("algorithm", algorithm.id())?;
            for (param, value) in params.iter().zip(self.figures()) {
                match param.kind {
                    Kind::Duration => {
                        map.serialize_entry(param.field(), &Millis::from_millis(value).to_string())?
                    }
                    _ => map.serialize_entry(param.field(), &value)?,
                }
            }
            map.end()
        }
    }

    impl<'de> Deserialize<'de> for Policy {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Policy, D::Error> {
            deserializer.deserialize_map(PolicyVisitor)
        }
    }

    struct PolicyVisitor;

    impl<'de> Visitor<'de> for PolicyVisitor {
        type Value = Policy;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a policy object")
        }

        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Policy, M::Error> {
            let mut algorithm = None;
            let mut fields: Vec<(String, Value)> = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                match key.as_str() {
                    "algorithm" => algorithm = Some(map.next_value::<String>()?),
                    _ => fields.push((key, map.next_value()?)),
                }
            }
            let json = |detail: String| de::Error::custom(PolicyError::Json(detail));
            let name = algorithm.ok_or_else(|| json("missing field `algorithm`".into()))?;
            let algorithm = Algorithm::with_id(&name)
                .ok_or_else(|| json(format!("unknown algorithm {name:?}")))?;
            let mut figures = Vec::with_capacity(algorithm.params().len());
            for param in algorithm.params() {
                let given = fields.iter().find(|(key, _)| key == param.field());
                let figure = match given.map(|(_, value)| value) {
                    Some(Value::Text(text)) => Figure::Text(text),
                    Some(Value::Number(n)) => Figure::Number(*n),
                    Some(Value::Other(what)) => {
                        return Err(json(format!("{} must be {what}", param.field())));
                    }
                    None if param.optional => Figure::Value(param.default),
                    None => return Err(json(format!("missing field `{}`", param.field()))),
                };
                figures.push((param, figure));
            }
            algorithm
                .read(figures.into_iter())
                .map_err(de::Error::custom)
        }
    }

    /// A figure's JSON value: text, a whole number, or anything else (which no figure is).
    enum Value {
        Text(String),
        Number(u64),
        /// What it should have been.
        Other(&'static str),
    }

    impl<'de> Deserialize<'de> for Value {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
            deserializer.deserialize_any(ValueVisitor)
        }
    }

    struct ValueVisitor;

    impl<'de> Visitor<'de> for ValueVisitor {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number or a text")
        }

        fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
            Ok(Value::Number(n))
        }

        fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
            Ok(
                u64::try_from(n)
                    .map_or(Value::Other("a whole number, not negative"), Value::Number),
            )
        }

        fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
            Ok(Value::Other("a whole number"))
        }

        fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
            Ok(Value::Other("a number or a text"))
        }

        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Other("a number or a text"))
        }

        fn visit_str<E>(self, text: &str) -> Result<Value, E> {
            Ok(Value::Text(text.to_string()))
        }

        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Value, M::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Value::Other("a number or a text"))
        }

        fn visit_seq<S: de::SeqAccess<'de>>(self, mut seq: S) -> Result<Value, S::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Value::Other("a number or a text"))
        }
    }
}

algorithms!(
    Fixed(FixedWindow),
    Sliding(SlidingWindow),
    Token(TokenBucket),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_reads_back() {
        for text in [
            "sliding:100:1m",
            "fixed:3:1s",
            "token:100:10:1s",
            "token:5:1:1h",
        ] {
            let policy: Policy = text.parse().unwrap();
            assert_eq!(policy.to_string(), text);
        }
        let token: Policy = "token:100:10:1s".parse().unwrap();
        assert_eq!(
            token,
            Policy::Token(TokenBucket::new(100, 10, Millis::SECOND).unwrap())
        );
        assert_eq!(token.args(), ["100", "10", "PER", "1000ms"]);
        assert_eq!(
            (token.quota(), token.window()),
            (100, Millis::from_millis(10_000))
        );
        for (text, error) in [
            ("sliding:0:1m", "\"sliding:0:1m\": limit must be at least 1"),
            ("fixed:5:0s", "\"0s\": a duration must be at least 1ms"),
            ("fixed:x:1s", "\"x\" is not a whole number"),
            (
                "fixed:1:1w",
                "\"1w\" is not a duration such as 60, 1500ms, 10m, 2h or 1d",
            ),
            (
                "leaky:1:1s",
                "\"leaky:1:1s\": a policy is fixed:LIMIT:WINDOW, sliding:LIMIT:WINDOW or \
                 token:CAPACITY:RATE:PERIOD (such as sliding:100:1m)",
            ),
            (
                "token:3651:1:1d",
                "\"token:3651:1:1d\": capacity / rate * PER must be at most 3650d: the bucket \
                 would refill too slowly",
            ),
        ] {
            assert_eq!(
                text.parse::<Policy>().unwrap_err().to_string(),
                error,
                "{text}"
            );
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn the_json_form_reads_back() {
        use serde_json::json;
        let read = |value| serde_json::from_value::<Policy>(value).map_err(|e| e.to_string());
        let sliding = json!({"algorithm": "sliding", "limit": 100, "window": "1m"});
        let policy = read(sliding.clone()).unwrap();
        assert_eq!(serde_json::to_value(policy).unwrap(), sliding);
        let token = read(json!({"algorithm": "token", "capacity": 100, "rate": 10})).unwrap();
        assert_eq!(
            serde_json::to_value(token).unwrap(),
            json!({"algorithm": "token", "capacity": 100, "rate": 10, "period": "1s"})
        );
        let seconds = read(json!({"algorithm": "fixed", "limit": 5, "window": 60, "x": [1]}));
        assert_eq!(seconds.unwrap().to_string(), "fixed:5:1m");
        for (value, error) in [
            (
                json!({"algorithm": "sliding", "limit": 0, "window": "1m"}),
                "limit must be at least 1",
            ),
            (
                json!({"algorithm": "fixed", "limit": 5, "window": "0s"}),
                "\"0s\": a duration must be at least 1ms",
            ),
            (
                json!({"algorithm": "sliding", "limit": 5}),
                "missing field `window`",
            ),
            (
                json!({"algorithm": "sliding", "limit": -5, "window": "1m"}),
                "limit must be a whole number, not negative",
            ),
            (
                json!({"algorithm": "leaky", "limit": 5}),
                "unknown algorithm \"leaky\"",
            ),
        ] {
            let got = read(value.clone()).unwrap_err();
            assert!(got.ends_with(error), "{value}: {got}");
        }
    }
}
