//! What leaves Cleanroom: `report` (the JSON report), `render` (its other formats), `deliver`
//! (reports written and runs stored), `distribute` (the report sent by email, POSTed or copied
//! into a directory), `exposition` (the Prometheus text format), `serve` (the
//! agent's HTTP routes) and `page` (the agent's front page).

pub mod deliver;
pub mod distribute;
pub mod exposition;
pub mod page;
pub mod render;
pub mod report;
pub mod serve;
