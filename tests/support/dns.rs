//! A stub DNS server for tests: UDP on 127.0.0.1, an ephemeral port, answers from a fixed
//! table built with hickory-proto. Use from a test file with
//! `#[path = "support/dns.rs"] mod dns;` and point `endpoint.dns_server` at the address.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::thread;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// What the stub answers for one name.
#[derive(Debug, Clone)]
pub enum Answer {
    /// MX records (preference, exchange), sent in the order given.
    Mx(Vec<(u16, String)>),
    /// TXT records (each one string).
    Txt(Vec<String>),
    /// A CNAME record (answered to CNAME queries).
    Cname(String),
    /// Addresses: the IPv4 ones answer A queries, the IPv6 ones AAAA, each in the order given.
    Ip(Vec<IpAddr>),
    /// The name exists but has no record of the asked type (NOERROR, no answers).
    NoData,
    /// The name does not exist.
    NxDomain,
    /// Never answer (the client times out).
    Silent,
}

/// Start the server in a background thread; it lives until the test process ends. Names not
/// in `records` get NXDOMAIN; a name may be listed once per record type.
pub fn start_stub_dns(records: Vec<(&str, Answer)>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind stub DNS");
    let addr = sock.local_addr().expect("stub DNS address");
    let table: Vec<(String, Answer)> = records
        .into_iter()
        .map(|(n, a)| (n.trim_end_matches('.').to_ascii_lowercase(), a))
        .collect();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if let Some(resp) = answer(&query, &table)
                && let Ok(bytes) = resp.to_vec()
            {
                let _ = sock.send_to(&bytes, peer);
            }
        }
    });
    addr
}

fn answer(query: &Message, table: &[(String, Answer)]) -> Option<Message> {
    let q = query.queries.first()?.clone();
    let qname = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let qtype = q.query_type();
    let mut resp = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    resp.add_query(q.clone());
    let name = q.name().clone();
    // A name may have several entries (MX and TXT): the one for the asked type, else the
    // first (NODATA, NXDOMAIN, silence).
    let by_name: Vec<&Answer> = table
        .iter()
        .filter(|(n, _)| *n == qname)
        .map(|(_, a)| a)
        .collect();
    let found = by_name
        .iter()
        .copied()
        .find(|a| {
            matches!(
                (a, qtype),
                (Answer::Mx(_), RecordType::MX)
                    | (Answer::Txt(_), RecordType::TXT)
                    | (Answer::Cname(_), RecordType::CNAME)
                    | (Answer::Ip(_), RecordType::A | RecordType::AAAA)
            )
        })
        .or(by_name.first().copied());
    let soa = || {
        Record::from_rdata(
            name.clone(),
            60,
            RData::SOA(SOA::new(
                Name::from_ascii("ns.test.").expect("name"),
                Name::from_ascii("hostmaster.test.").expect("name"),
                1,
                3600,
                600,
                86400,
                60,
            )),
        )
    };
    match found {
        Some(Answer::Silent) => return None,
        Some(Answer::Mx(list)) if qtype == RecordType::MX => {
            for (pref, host) in list {
                let exch = Name::from_ascii(format!("{}.", host.trim_end_matches('.')))
                    .expect("MX host name");
                resp.add_answer(Record::from_rdata(
                    name.clone(),
                    300,
                    RData::MX(MX::new(*pref, exch)),
                ));
            }
        }
        Some(Answer::Ip(list))
            if matches!(qtype, RecordType::A | RecordType::AAAA)
                && list
                    .iter()
                    .any(|ip| ip.is_ipv4() == (qtype == RecordType::A)) =>
        {
            for ip in list {
                let rdata = match ip {
                    IpAddr::V4(v4) if qtype == RecordType::A => RData::A(A(*v4)),
                    IpAddr::V6(v6) if qtype == RecordType::AAAA => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(name.clone(), 300, rdata));
            }
        }
        Some(Answer::Txt(list)) if qtype == RecordType::TXT => {
            for t in list {
                resp.add_answer(Record::from_rdata(
                    name.clone(),
                    300,
                    RData::TXT(TXT::new(vec![t.clone()])),
                ));
            }
        }
        Some(Answer::Cname(target)) if qtype == RecordType::CNAME => {
            let t = Name::from_ascii(format!("{}.", target.trim_end_matches('.')))
                .expect("CNAME target");
            resp.add_answer(Record::from_rdata(
                name.clone(),
                300,
                RData::CNAME(CNAME(t)),
            ));
        }
        Some(_) => {
            resp.authorities.push(soa());
        }
        None => {
            resp.metadata.response_code = ResponseCode::NXDomain;
            resp.authorities.push(soa());
        }
    }
    if let Some(Answer::NxDomain) = found {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    Some(resp)
}
