//! Routing: which channels an alert goes to.

use crate::config::RouteSpec;

/// The channel names of every route `severity`, `rule_id` and `org_id` match, each once, in the
/// order the routes name them.
pub fn channels_for<'a>(
    routes: &'a [RouteSpec],
    severity: &str,
    rule_id: &str,
    org_id: i64,
) -> Vec<&'a str> {
    let mut channels: Vec<&str> = Vec::new();
    for route in routes {
        let matches = (route.severities.is_empty()
            || route.severities.iter().any(|s| s == severity))
            && (route.rules.is_empty() || route.rules.iter().any(|r| r == rule_id))
            && (route.orgs.is_empty() || route.orgs.contains(&org_id));
        if !matches {
            continue;
        }
        for channel in &route.channels {
            if !channels.contains(&channel.as_str()) {
                channels.push(channel);
            }
        }
    }
    channels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(severities: &[&str], rules: &[&str], orgs: &[i64], channels: &[&str]) -> RouteSpec {
        RouteSpec {
            severities: severities.iter().map(|s| (*s).to_owned()).collect(),
            rules: rules.iter().map(|s| (*s).to_owned()).collect(),
            orgs: orgs.to_vec(),
            channels: channels.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn routes_match_by_severity_rule_and_org_and_channels_come_once() {
        let routes = [
            route(&["critical"], &[], &[], &["pager", "ops"]),
            route(&[], &["low-ctr"], &[1, 2], &["marketing", "ops"]),
        ];
        assert_eq!(
            channels_for(&routes, "critical", "low-ctr", 1),
            ["pager", "ops", "marketing"]
        );
        assert_eq!(
            channels_for(&routes, "warning", "low-ctr", 2),
            ["marketing", "ops"]
        );
        assert!(channels_for(&routes, "warning", "low-ctr", 3).is_empty());
        assert!(channels_for(&routes, "info", "spend-spike", 1).is_empty());
    }
}
