//! SQL functions for flow analysis, registered on every session.
//!
//! The registry is the plain list in [`all`]; a test rejects duplicate names and names
//! that would shadow a DataFusion built-in. To add a function: write its kernel (arrays
//! in, array out), its argument coercion and its [`Documentation`], and add it to `all`.
//!
//! | function | returns |
//! |---|---|
//! | `ip_in_cidr(ip, cidr)` | whether the address is inside the network (`NULL` for a malformed address) |
//! | `ip_version(ip)` | 4 or 6 (`NULL` for a malformed address) |
//! | `is_private_ip(ip)` | RFC 1918 / 6598, loopback, link-local, IPv6 unique-local |
//! | `label(labels, key)` | the value of one label of a `map<string,string>` column |
//! | `service_name(port, proto)` | the well-known service name (`https`, `dns`…), else `NULL` |
//!
//! Time bucketing needs nothing of ours: DataFusion has `date_bin` and `date_trunc`.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use arrow_array::cast::AsArray as _;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, BooleanArray, Int32Array, StringArray};
use arrow_schema::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use ipnet::IpNet;

type Kernel = fn(&[ArrayRef]) -> Result<ArrayRef>;
type Coercion = fn(&'static str, &[DataType]) -> Result<Vec<DataType>>;

/// One Bulkhead SQL function: a name, its coercion, its kernel and its documentation.
#[derive(Debug)]
struct FlowFunction {
    name: &'static str,
    signature: Signature,
    returns: DataType,
    coerce: Coercion,
    kernel: Kernel,
    documentation: Documentation,
}

impl PartialEq for FlowFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for FlowFunction {}
impl Hash for FlowFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for FlowFunction {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        (self.coerce)(self.name, arg_types)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let out = (self.kernel)(&arrays)?;
        if scalar && out.len() == 1 {
            return Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&out, 0)?,
            ));
        }
        Ok(ColumnarValue::Array(out))
    }
    fn documentation(&self) -> Option<&Documentation> {
        Some(&self.documentation)
    }
}

fn section() -> DocSection {
    DocSection {
        include: true,
        label: "Bulkhead flow functions",
        description: Some("Functions for addresses, labels and services in the flow lake."),
    }
}

fn doc(
    description: &str,
    syntax: &str,
    example: &str,
    arguments: &[(&str, &str)],
) -> Documentation {
    let mut builder =
        Documentation::builder(section(), description, syntax).with_sql_example(example);
    for (name, text) in arguments {
        builder = builder.with_argument(*name, *text);
    }
    builder.build()
}

fn udf(
    name: &'static str,
    returns: DataType,
    coerce: Coercion,
    kernel: Kernel,
    documentation: Documentation,
) -> ScalarUDF {
    ScalarUDF::new_from_impl(FlowFunction {
        name,
        signature: Signature::user_defined(Volatility::Immutable),
        returns,
        coerce,
        kernel,
        documentation,
    })
}

/// Every Bulkhead SQL function (the registry).
pub fn all() -> Vec<ScalarUDF> {
    vec![
        udf(
            "ip_in_cidr",
            DataType::Boolean,
            texts::<2>,
            ip_in_cidr,
            doc(
                "Whether an IP address (text) is inside a network given in CIDR notation; \
                 a bare address means that one address. NULL when the address is NULL or \
                 malformed; a malformed network is an error.",
                "ip_in_cidr(ip, cidr)",
                "SELECT count(*) FROM flows WHERE ip_in_cidr(dst_ip, '10.0.0.0/8')",
                &[
                    (
                        "ip",
                        "IPv4 or IPv6 address as text, e.g. a `src_ip` column.",
                    ),
                    ("cidr", "Network such as `10.0.0.0/8` or `fd00::/8`."),
                ],
            ),
        ),
        udf(
            "ip_version",
            DataType::Int32,
            texts::<1>,
            ip_version,
            doc(
                "4 or 6: the version of an IP address (text); NULL when malformed.",
                "ip_version(ip)",
                "SELECT ip_version(dst_ip), count(*) FROM flows GROUP BY 1",
                &[("ip", "IPv4 or IPv6 address as text.")],
            ),
        ),
        udf(
            "is_private_ip",
            DataType::Boolean,
            texts::<1>,
            is_private_ip,
            doc(
                "Whether an address is not routed on the internet: RFC 1918 (10/8, \
                 172.16/12, 192.168/16), RFC 6598 shared space (100.64/10), loopback, \
                 link-local, IPv6 unique-local (fc00::/7), link-local (fe80::/10) and ::1. \
                 NULL when malformed.",
                "is_private_ip(ip)",
                "SELECT dst_ip, sum(bytes) FROM flows WHERE NOT is_private_ip(dst_ip) GROUP BY 1",
                &[("ip", "IPv4 or IPv6 address as text.")],
            ),
        ),
        udf(
            "label",
            DataType::Utf8,
            label_args,
            label,
            doc(
                "The value of label `key` in a labels map (`src_labels`, `dst_labels`, \
                 `labels`); NULL when the map is NULL or has no such key.",
                "label(labels, key)",
                "SELECT label(src_labels, 'app') AS app, sum(bytes) FROM flows GROUP BY 1",
                &[
                    ("labels", "A `map<string,string>` column."),
                    ("key", "Label key such as `app`, `env`, `role`, `loc`."),
                ],
            ),
        ),
        udf(
            "service_name",
            DataType::Utf8,
            service_args,
            service_name,
            doc(
                "The well-known name of a service port (`https`, `ssh`, `dns`, \
                 `postgresql`…) for a protocol given as IANA number (6, 17) or name \
                 (`tcp`, `udp`); NULL when not a well-known service.",
                "service_name(port, proto)",
                "SELECT service_name(dst_port, protocol), count(*) FROM flows GROUP BY 1",
                &[
                    ("port", "Destination port."),
                    (
                        "proto",
                        "Protocol: IANA number (6 = tcp, 17 = udp) or name.",
                    ),
                ],
            ),
        ),
    ]
}

/// Registers every function on `ctx`.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    for f in all() {
        ctx.register_udf(f);
    }
}

fn is_text(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
    )
}

fn is_integer(t: &DataType) -> bool {
    t.is_integer() || matches!(t, DataType::Null)
}

fn plan_error(message: String) -> DataFusionError {
    DataFusionError::Plan(message)
}

fn texts<const N: usize>(name: &'static str, types: &[DataType]) -> Result<Vec<DataType>> {
    if types.len() != N || !types.iter().all(is_text) {
        return Err(plan_error(format!(
            "{name} takes {N} text argument(s), got ({})",
            list(types)
        )));
    }
    Ok(vec![DataType::Utf8; N])
}

fn label_args(name: &'static str, types: &[DataType]) -> Result<Vec<DataType>> {
    match types {
        [map @ (DataType::Map(..) | DataType::Null), key] if is_text(key) => {
            Ok(vec![map.clone(), DataType::Utf8])
        }
        _ => Err(plan_error(format!(
            "{name}(labels, key) takes a map<string,string> and a text key, got ({})",
            list(types)
        ))),
    }
}

fn service_args(name: &'static str, types: &[DataType]) -> Result<Vec<DataType>> {
    match types {
        [port, proto] if is_integer(port) && is_integer(proto) => {
            Ok(vec![DataType::Int64, DataType::Int64])
        }
        [port, proto] if is_integer(port) && is_text(proto) => {
            Ok(vec![DataType::Int64, DataType::Utf8])
        }
        _ => Err(plan_error(format!(
            "{name}(port, proto) takes an integer port and a protocol number or name, got ({})",
            list(types)
        ))),
    }
}

fn list(types: &[DataType]) -> String {
    types
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.trim().parse().ok()
}

fn parse_network(text: &str) -> Result<IpNet> {
    let t = text.trim();
    t.parse::<IpNet>()
        .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            DataFusionError::Execution(format!(
                "ip_in_cidr: {text:?} is not a network in CIDR notation (e.g. 10.0.0.0/8)"
            ))
        })
}

fn ip_in_cidr(args: &[ArrayRef]) -> Result<ArrayRef> {
    let ips = args[0].as_string::<i32>();
    let nets = args[1].as_string::<i32>();
    // The network is nearly always a literal: parse each distinct text once.
    let mut last: Option<(String, IpNet)> = None;
    let mut out = Vec::with_capacity(ips.len());
    for i in 0..ips.len() {
        if ips.is_null(i) || nets.is_null(i) {
            out.push(None);
            continue;
        }
        let text = nets.value(i);
        let net = match &last {
            Some((t, n)) if t == text => *n,
            _ => {
                let n = parse_network(text)?;
                last = Some((text.to_string(), n));
                n
            }
        };
        out.push(parse_ip(ips.value(i)).map(|ip| net.contains(&ip)));
    }
    Ok(Arc::new(BooleanArray::from(out)))
}

fn ip_version(args: &[ArrayRef]) -> Result<ArrayRef> {
    let ips = args[0].as_string::<i32>();
    let out: Int32Array = ips
        .iter()
        .map(|ip| {
            ip.and_then(parse_ip).map(|ip| match ip {
                IpAddr::V4(_) => 4,
                IpAddr::V6(_) => 6,
            })
        })
        .collect();
    Ok(Arc::new(out))
}

/// Whether `ip` is not routed on the internet (see the function's documentation).
pub fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

fn is_private_ip(args: &[ArrayRef]) -> Result<ArrayRef> {
    let ips = args[0].as_string::<i32>();
    let out: BooleanArray = ips
        .iter()
        .map(|ip| ip.and_then(parse_ip).map(private))
        .collect();
    Ok(Arc::new(out))
}

fn label(args: &[ArrayRef]) -> Result<ArrayRef> {
    let keys = args[1].as_string::<i32>();
    if args[0].data_type() == &DataType::Null {
        return Ok(Arc::new(StringArray::new_null(keys.len())));
    }
    let maps = args[0].as_map();
    let map_keys = arrow_cast_utf8(maps.keys())?;
    let map_values = arrow_cast_utf8(maps.values())?;
    let (map_keys, map_values) = (map_keys.as_string::<i32>(), map_values.as_string::<i32>());
    let offsets = maps.value_offsets();
    let mut out = arrow_array::builder::StringBuilder::with_capacity(maps.len(), maps.len() * 8);
    for i in 0..maps.len() {
        if maps.is_null(i) || keys.is_null(i) {
            out.append_null();
            continue;
        }
        let key = keys.value(i);
        let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
        match (start..end).find(|&j| !map_keys.is_null(j) && map_keys.value(j) == key) {
            Some(j) if !map_values.is_null(j) => out.append_value(map_values.value(j)),
            _ => out.append_null(),
        }
    }
    Ok(Arc::new(out.finish()))
}

fn arrow_cast_utf8(array: &ArrayRef) -> Result<ArrayRef> {
    Ok(datafusion::arrow::compute::cast(array, &DataType::Utf8)?)
}

/// Well-known services by (IANA protocol number, port).
const SERVICES: &[(i64, i64, &str)] = &[
    (6, 20, "ftp-data"),
    (6, 21, "ftp"),
    (6, 22, "ssh"),
    (6, 23, "telnet"),
    (6, 25, "smtp"),
    (6, 53, "dns"),
    (17, 53, "dns"),
    (17, 67, "dhcp"),
    (17, 68, "dhcp"),
    (6, 80, "http"),
    (6, 88, "kerberos"),
    (17, 88, "kerberos"),
    (6, 110, "pop3"),
    (17, 123, "ntp"),
    (6, 143, "imap"),
    (17, 161, "snmp"),
    (6, 389, "ldap"),
    (6, 443, "https"),
    (17, 443, "quic"),
    (6, 445, "smb"),
    (17, 514, "syslog"),
    (6, 587, "submission"),
    (6, 636, "ldaps"),
    (6, 993, "imaps"),
    (6, 995, "pop3s"),
    (6, 1433, "mssql"),
    (6, 1521, "oracle"),
    (6, 2181, "zookeeper"),
    (6, 2379, "etcd"),
    (6, 3306, "mysql"),
    (6, 3389, "rdp"),
    (6, 5432, "postgresql"),
    (6, 5672, "amqp"),
    (6, 6379, "redis"),
    (6, 6443, "kubernetes-api"),
    (6, 8080, "http-alt"),
    (6, 8443, "https-alt"),
    (6, 9090, "prometheus"),
    (6, 9092, "kafka"),
    (6, 9200, "elasticsearch"),
    (6, 11211, "memcached"),
    (6, 27017, "mongodb"),
];

fn protocol_number(name: &str) -> Option<i64> {
    match name.trim().to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "sctp" => Some(132),
        other => other.parse().ok(),
    }
}

fn service_name(args: &[ArrayRef]) -> Result<ArrayRef> {
    let ports = args[0].as_primitive::<Int64Type>();
    let lookup = |port: Option<i64>, proto: Option<i64>| -> Option<&'static str> {
        let (port, proto) = (port?, proto?);
        SERVICES
            .iter()
            .find(|(p, n, _)| *p == proto && *n == port)
            .map(|(_, _, name)| *name)
    };
    let out: StringArray = if args[1].data_type() == &DataType::Utf8 {
        let protos = args[1].as_string::<i32>();
        ports
            .iter()
            .zip(protos.iter())
            .map(|(port, proto)| lookup(port, proto.and_then(protocol_number)))
            .collect()
    } else {
        let protos = args[1].as_primitive::<Int64Type>();
        ports
            .iter()
            .zip(protos.iter())
            .map(|(port, proto)| lookup(port, proto))
            .collect()
    };
    Ok(Arc::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::FunctionRegistry as _;
    use datafusion::prelude::SessionContext;

    #[test]
    fn names_are_unique_and_shadow_no_builtin() {
        let ctx = SessionContext::new();
        let mut seen = std::collections::HashSet::new();
        for f in all() {
            assert!(
                seen.insert(f.name().to_string()),
                "duplicate function {}",
                f.name()
            );
            assert!(
                ctx.udf(f.name()).is_err(),
                "{} would shadow a DataFusion built-in",
                f.name()
            );
            let doc = f.documentation().expect("every function is documented");
            assert!(doc.syntax_example.starts_with(f.name()));
        }
    }

    async fn one(sql: &str) -> String {
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = ctx
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
            .lines()
            .nth(3)
            .unwrap()
            .trim_matches(|c| c == '|' || c == ' ')
            .split('|')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(",")
    }

    #[tokio::test]
    async fn ip_functions() {
        assert_eq!(
            one("SELECT ip_in_cidr('10.1.2.3', '10.0.0.0/8'), ip_in_cidr('11.1.2.3', '10.0.0.0/8'), \
                 ip_in_cidr('fd00::1', 'fd00::/8'), ip_in_cidr('10.0.0.1', 'fd00::/8'), \
                 ip_in_cidr('10.0.0.1', '10.0.0.1'), ip_in_cidr('nonsense', '10.0.0.0/8') IS NULL")
            .await,
            "true,false,true,false,true,true"
        );
        assert_eq!(
            one(
                "SELECT ip_version('10.0.0.1'), ip_version('2001:db8::1'), ip_version('x') IS NULL"
            )
            .await,
            "4,6,true"
        );
        assert_eq!(
            one("SELECT is_private_ip('10.0.0.1'), is_private_ip('172.20.0.1'), is_private_ip('192.168.1.1'), \
                 is_private_ip('100.64.0.1'), is_private_ip('8.8.8.8'), is_private_ip('fd12::1'), \
                 is_private_ip('2606:4700::1'), is_private_ip('127.0.0.1')")
            .await,
            "true,true,true,true,false,true,false,true"
        );
    }

    #[tokio::test]
    async fn bad_network_is_an_error_naming_it() {
        let ctx = SessionContext::new();
        register(&ctx);
        let err = ctx
            .sql("SELECT ip_in_cidr('10.0.0.1', '10.0.0/8')")
            .await
            .unwrap()
            .collect()
            .await
            .expect_err("a malformed network must fail");
        assert!(
            err.to_string().contains("\"10.0.0/8\" is not a network"),
            "{err}"
        );
        let err = ctx
            .sql("SELECT ip_in_cidr(1, 2)")
            .await
            .expect_err("numbers are not addresses");
        assert!(err.to_string().contains("ip_in_cidr takes 2 text"), "{err}");
    }

    #[test]
    fn label_finds_the_right_values_of_sliced_maps_with_nulls() {
        use arrow_array::builder::{MapBuilder, StringBuilder};
        let mut maps = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        let rows: [Option<&[(&str, &str)]>; 5] = [
            Some(&[("app", "first")]),
            Some(&[
                ("env", "prod"),
                ("app", "an-application-name-longer-than-twelve"),
            ]),
            None,
            Some(&[("env", "staging")]),
            Some(&[("app", "crm"), ("role", "db")]),
        ];
        for row in rows {
            if let Some(entries) = row {
                for (k, v) in entries {
                    maps.keys().append_value(k);
                    maps.values().append_value(v);
                }
            }
            maps.append(row.is_some()).unwrap();
        }
        let maps: ArrayRef = Arc::new(maps.finish().slice(1, 4));
        let keys: ArrayRef = Arc::new(StringArray::from(vec![Some("app"); 4]));
        let out = label(&[maps, keys]).unwrap();
        let out: Vec<Option<&str>> = out.as_string::<i32>().iter().collect();
        assert_eq!(
            out,
            [
                Some("an-application-name-longer-than-twelve"),
                None,
                None,
                Some("crm")
            ]
        );
    }

    #[tokio::test]
    async fn label_and_service_name() {
        assert_eq!(
            one("SELECT label(MAP {'app': 'crm', 'env': 'prod'}, 'env'), \
                 label(MAP {'app': 'crm'}, 'role') IS NULL")
            .await,
            "prod,true"
        );
        assert_eq!(
            one(
                "SELECT service_name(443, 6), service_name(53, 'udp'), service_name(443, 'TCP'), \
                 service_name(CAST(5432 AS INT), CAST(6 AS INT)), service_name(4444, 6) IS NULL"
            )
            .await,
            "https,dns,https,postgresql,true"
        );
    }
}
