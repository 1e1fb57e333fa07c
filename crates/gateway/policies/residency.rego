# Data residency: a tenant's traffic is served only by a gateway in the tenant's home region.
#
# A request for a tenant homed elsewhere is refused with 451 and a reason, or, when `redirect`
# below is set to true, answered with a 307 to the tenant's regional host
# (`https://<tenant.region>.api.example.com<path>`). The switch is a constant in this file
# (input-independent): edit it, or override it in tests with `with data.runway.gateway.redirect as true`.
# Requests without a tenant (operator and public routes) are not subject to residency.
package runway.gateway

# true: redirect (307) to the tenant's region; false: refuse (451).
redirect := false

default allow := false

allow if not input.tenant

allow if input.tenant.region == input.gateway_region

wrong_region if input.tenant.region != input.gateway_region

deny_reason := sprintf(
	"tenant %s keeps its data in region %s; this gateway serves region %s",
	[input.tenant.id, input.tenant.region, input.gateway_region],
) if wrong_region

status := 451 if {
	wrong_region
	not redirect
}

status := 307 if {
	wrong_region
	redirect
}

location := sprintf("https://%s.api.example.com%s", [input.tenant.region, input.path]) if {
	wrong_region
	redirect
}

# --- tests (`runway policy test residency.rego`) ---

eu_tenant := {"id": "ten_1", "plan": "pro", "region": "eu", "metadata": {}}

test_home_region_allowed if {
	allow with input as {"tenant": eu_tenant, "gateway_region": "eu", "path": "/v1/orders"}
}

test_no_tenant_allowed if {
	allow with input as {"gateway_region": "us", "path": "/healthz"}
}

test_other_region_refused_451 if {
	req := {"tenant": eu_tenant, "gateway_region": "us", "path": "/v1/orders"}
	not allow with input as req
	status == 451 with input as req
	not location with input as req
	contains(deny_reason, "region eu") with input as req
}

test_other_region_redirected_when_enabled if {
	req := {"tenant": eu_tenant, "gateway_region": "us", "path": "/v1/orders/42"}
	not allow with input as req with data.runway.gateway.redirect as true
	status == 307 with input as req with data.runway.gateway.redirect as true
	location == "https://eu.api.example.com/v1/orders/42" with input as req with data.runway.gateway.redirect as true
}
