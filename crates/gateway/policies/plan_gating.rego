# Plan gating: routes whose name starts with `analytics` are only for tenants on the `pro` or
# `enterprise` plan. Allowed tenant requests carry the tenant's plan upstream in `x-plan`; a
# client-sent `x-plan` is never passed on (replaced for tenants, removed otherwise).
package runway.gateway

analytics_plans := {"pro", "enterprise"}

default allow := false

gated if startswith(input.route, "analytics")

allow if not gated

allow if {
	gated
	input.tenant.plan in analytics_plans
}

deny_reason := sprintf(
	"route %s needs plan pro or enterprise; the tenant's plan is %s",
	[input.route, object.get(input, ["tenant", "plan"], "none")],
) if not allow

set_headers["x-plan"] := input.tenant.plan

remove_headers contains "x-plan" if not input.tenant

# --- tests (`runway policy test plan_gating.rego`) ---

test_ungated_route_allowed_for_free_plan if {
	allow with input as {"route": "orders", "tenant": {"id": "t", "plan": "free", "region": "eu"}}
}

test_analytics_refused_for_free_plan if {
	req := {"route": "analytics-export", "tenant": {"id": "t", "plan": "free", "region": "eu"}}
	not allow with input as req
	deny_reason == "route analytics-export needs plan pro or enterprise; the tenant's plan is free" with input as req
}

test_analytics_allowed_for_pro_with_header if {
	req := {"route": "analytics", "tenant": {"id": "t", "plan": "pro", "region": "eu"}}
	allow with input as req
	set_headers == {"x-plan": "pro"} with input as req
}

test_analytics_refused_without_tenant if {
	not allow with input as {"route": "analytics"}
}

test_header_removed_without_tenant if {
	remove_headers == {"x-plan"} with input as {"route": "orders"}
}
