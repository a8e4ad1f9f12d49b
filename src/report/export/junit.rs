//! JUnit XML: a testsuite per broker and run, a testcase per check, so CI
//! test reporters list each threshold and correctness check by name.

use anyhow::Result;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

use super::{broker_label, Document, Exporter};
use crate::report::Results;

/// The JUnit exporter.
pub struct Junit;

impl Exporter for Junit {
    fn export(&self, runs: &[Results]) -> Result<Vec<Document>> {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        // Per run, one more testcase: the run completed (every broker of the
        // scenario measured), which no broker's checks can say.
        let tests: usize = runs
            .iter()
            .map(|r| 1 + r.brokers.iter().map(|b| b.checks.len()).sum::<usize>())
            .sum();
        let failures: usize = runs
            .iter()
            .map(|r| {
                usize::from(!r.complete)
                    + r.brokers
                        .iter()
                        .map(|b| b.checks.iter().filter(|c| !c.passed).count())
                        .sum::<usize>()
            })
            .sum();
        let mut root = BytesStart::new("testsuites");
        root.push_attribute(("name", "brokerbench"));
        root.push_attribute(("tests", tests.to_string().as_str()));
        root.push_attribute(("failures", failures.to_string().as_str()));
        w.write_event(Event::Start(root))?;
        for r in runs {
            let mut suite = BytesStart::new("testsuite");
            let name = format!("{} run", r.scenario.name);
            suite.push_attribute(("name", name.as_str()));
            suite.push_attribute(("tests", "1"));
            suite.push_attribute(("failures", usize::from(!r.complete).to_string().as_str()));
            suite.push_attribute(("errors", "0"));
            suite.push_attribute(("timestamp", r.started_at.as_str()));
            w.write_event(Event::Start(suite))?;
            let mut case = BytesStart::new("testcase");
            case.push_attribute(("name", "complete"));
            case.push_attribute(("classname", "brokerbench.run"));
            match &r.incomplete_reason {
                None if r.complete => w.write_event(Event::Empty(case))?,
                reason => {
                    w.write_event(Event::Start(case))?;
                    let message = format!(
                        "incomplete: {}",
                        reason.as_deref().unwrap_or("not every broker was measured")
                    );
                    let mut failure = BytesStart::new("failure");
                    failure.push_attribute(("message", message.as_str()));
                    failure.push_attribute(("type", "incomplete"));
                    w.write_event(Event::Start(failure))?;
                    w.write_event(Event::Text(BytesText::new(&message)))?;
                    w.write_event(Event::End(BytesEnd::new("failure")))?;
                    w.write_event(Event::End(BytesEnd::new("testcase")))?;
                }
            }
            w.write_event(Event::End(BytesEnd::new("testsuite")))?;
            for b in &r.brokers {
                let suite_name = format!("{} on {}", r.scenario.name, broker_label(b));
                let mut suite = BytesStart::new("testsuite");
                suite.push_attribute(("name", suite_name.as_str()));
                suite.push_attribute(("tests", b.checks.len().to_string().as_str()));
                let failed = b.checks.iter().filter(|c| !c.passed).count();
                suite.push_attribute(("failures", failed.to_string().as_str()));
                suite.push_attribute(("errors", "0"));
                suite.push_attribute(("timestamp", r.started_at.as_str()));
                suite.push_attribute(("time", b.load.steady_seconds.to_string().as_str()));
                w.write_event(Event::Start(suite))?;

                let mut props = vec![
                    ("implementation", b.implementation.clone()),
                    ("endpoint", b.endpoint.clone()),
                    ("environment", r.environment.clone()),
                ];
                if let Some(product) = &b.stand_in_for {
                    props.push(("stand_in_for", product.clone()));
                }
                w.write_event(Event::Start(BytesStart::new("properties")))?;
                for (name, value) in &props {
                    let mut p = BytesStart::new("property");
                    p.push_attribute(("name", *name));
                    p.push_attribute(("value", value.as_str()));
                    w.write_event(Event::Empty(p))?;
                }
                w.write_event(Event::End(BytesEnd::new("properties")))?;

                for c in &b.checks {
                    let name = c.condition(&b.faults);
                    let mut case = BytesStart::new("testcase");
                    case.push_attribute(("name", name.as_str()));
                    case.push_attribute((
                        "classname",
                        format!("brokerbench.{}", b.broker).as_str(),
                    ));
                    if c.passed {
                        w.write_event(Event::Empty(case))?;
                        continue;
                    }
                    w.write_event(Event::Start(case))?;
                    let message = format!("{name}: measured {}", c.measured());
                    let mut failure = BytesStart::new("failure");
                    failure.push_attribute(("message", message.as_str()));
                    failure.push_attribute(("type", "check"));
                    w.write_event(Event::Start(failure))?;
                    w.write_event(Event::Text(BytesText::new(&message)))?;
                    w.write_event(Event::End(BytesEnd::new("failure")))?;
                    w.write_event(Event::End(BytesEnd::new("testcase")))?;
                }
                w.write_event(Event::End(BytesEnd::new("testsuite")))?;
            }
        }
        w.write_event(Event::End(BytesEnd::new("testsuites")))?;
        let mut content = w.into_inner();
        content.push(b'\n');
        Ok(vec![Document {
            file_name: "junit.xml".into(),
            content,
        }])
    }
}
