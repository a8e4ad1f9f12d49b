//! JUnit XML: a testsuite per broker and run, a testcase per check, so CI
//! test reporters list each threshold and correctness check by name; and per
//! run a `complete` testcase, which no broker's checks can stand for.

use anyhow::Result;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

use super::{broker_label, Document, Exporter};
use crate::results::{BrokerResult, Results};

/// The JUnit exporter.
pub(crate) struct Junit;

type Xml = Writer<Vec<u8>>;

/// Opens element `tag` with `attributes`.
fn open(w: &mut Xml, tag: &str, attributes: &[(&str, &str)]) -> Result<()> {
    let mut element = BytesStart::new(tag);
    for &(key, value) in attributes {
        element.push_attribute((key, value));
    }
    w.write_event(Event::Start(element))?;
    Ok(())
}

fn close(w: &mut Xml, tag: &str) -> Result<()> {
    w.write_event(Event::End(BytesEnd::new(tag)))?;
    Ok(())
}

/// One `<testcase>`, with a `<failure>` of `kind` saying `message` when it failed.
fn case(w: &mut Xml, name: &str, class: &str, failure: Option<(&str, String)>) -> Result<()> {
    let mut element = BytesStart::new("testcase");
    element.push_attribute(("name", name));
    element.push_attribute(("classname", class));
    let Some((kind, message)) = failure else {
        w.write_event(Event::Empty(element))?;
        return Ok(());
    };
    w.write_event(Event::Start(element))?;
    open(w, "failure", &[("message", &message), ("type", kind)])?;
    w.write_event(Event::Text(BytesText::new(&message)))?;
    close(w, "failure")?;
    close(w, "testcase")
}

impl Exporter for Junit {
    fn export(&self, runs: &[Results]) -> Result<Vec<Document>> {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        let failed_checks = |r: &Results| -> usize {
            r.brokers
                .iter()
                .map(|b| b.checks.iter().filter(|c| !c.passed).count())
                .sum()
        };
        let tests: usize = runs
            .iter()
            .map(|r| 1 + r.brokers.iter().map(|b| b.checks.len()).sum::<usize>())
            .sum();
        let failures: usize = runs
            .iter()
            .map(|r| usize::from(!r.complete) + failed_checks(r))
            .sum();
        open(
            &mut w,
            "testsuites",
            &[
                ("name", "brokerbench"),
                ("tests", &tests.to_string()),
                ("failures", &failures.to_string()),
            ],
        )?;
        for r in runs {
            run_suite(&mut w, r)?;
            for b in &r.brokers {
                broker_suite(&mut w, r, b)?;
            }
        }
        close(&mut w, "testsuites")?;
        let mut content = w.into_inner();
        content.push(b'\n');
        Ok(vec![Document {
            file_name: "junit.xml".into(),
            content,
        }])
    }
}

/// The run's `<testsuite>`, holding its one `complete` testcase.
fn run_suite(w: &mut Xml, r: &Results) -> Result<()> {
    let incomplete = usize::from(!r.complete).to_string();
    open(
        w,
        "testsuite",
        &[
            ("name", &format!("{} run", r.scenario.name)),
            ("tests", "1"),
            ("failures", &incomplete),
            ("errors", "0"),
            ("timestamp", &r.started_at),
        ],
    )?;
    let failure = (!r.complete).then(|| {
        let why = r
            .incomplete_reason
            .as_deref()
            .unwrap_or("not every broker was measured");
        ("incomplete", format!("incomplete: {why}"))
    });
    case(w, "complete", "brokerbench.run", failure)?;
    close(w, "testsuite")
}

/// Broker `b`'s `<testsuite>`: its properties and a testcase per check.
fn broker_suite(w: &mut Xml, r: &Results, b: &BrokerResult) -> Result<()> {
    let failed = b.checks.iter().filter(|c| !c.passed).count();
    let attributes = [
        (
            "name",
            format!("{} on {}", r.scenario.name, broker_label(b)),
        ),
        ("tests", b.checks.len().to_string()),
        ("failures", failed.to_string()),
        ("errors", "0".into()),
        ("timestamp", r.started_at.clone()),
        ("time", b.load.steady_seconds.to_string()),
    ];
    let attributes: Vec<(&str, &str)> = attributes.iter().map(|(k, v)| (*k, v.as_str())).collect();
    open(w, "testsuite", &attributes)?;
    properties(w, r, b)?;

    let class = format!("brokerbench.{}", b.broker);
    for c in &b.checks {
        let name = c.condition(&b.faults);
        let failure = (!c.passed).then(|| ("check", format!("{name}: measured {}", c.measured())));
        case(w, &name, &class, failure)?;
    }
    close(w, "testsuite")
}

/// Broker `b`'s `<properties>`: what ran, where, and what it stands in for.
fn properties(w: &mut Xml, r: &Results, b: &BrokerResult) -> Result<()> {
    let mut props = vec![
        ("implementation", b.implementation.as_str()),
        ("endpoint", b.endpoint.as_str()),
        ("environment", r.environment.as_str()),
    ];
    if let Some(product) = &b.stand_in_for {
        props.push(("stand_in_for", product.as_str()));
    }
    open(w, "properties", &[])?;
    for (name, value) in props {
        let mut p = BytesStart::new("property");
        p.push_attribute(("name", name));
        p.push_attribute(("value", value));
        w.write_event(Event::Empty(p))?;
    }
    close(w, "properties")
}
