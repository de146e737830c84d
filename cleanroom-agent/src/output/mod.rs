//! What leaves Cleanroom: `report` (the JSON report), `render` (its other formats), `deliver`
//! (reports written and runs stored), `distribute` (the report sent by email, POSTed or copied
//! into a directory), `otlp` (each run's metrics to an OpenTelemetry collector),
//! `exposition` (the Prometheus text format), `serve` (the
//! agent's HTTP routes) and `page` (the agent's front page).

pub mod deliver;
pub mod distribute;
pub mod exposition;
pub mod otlp;
pub mod page;
pub mod render;
pub mod report;
pub mod serve;
