//! What leaves Cleanroom: `report` (the JSON report), `render` (its other formats), `deliver`
//! (reports written and runs stored), `exposition` (the Prometheus text format), `serve` (the
//! agent's HTTP routes) and `page` (the agent's front page).

pub mod deliver;
pub mod exposition;
pub mod page;
pub mod render;
pub mod report;
pub mod serve;
