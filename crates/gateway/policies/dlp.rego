# Data-loss prevention: refuse (403, the contract's default status) JSON request bodies that carry
# a payment card number anywhere in them.
#
# Every string in the body (at any depth, found with `walk`) is checked, and every integer:
# after trimming, a string of only digits, spaces and dashes with 13-19 digits, not starting
# with 0, that passes the Luhn checksum is a card number. Luhn is computed here in Rego (no
# regex builtin needed). Card numbers embedded in longer free text ("my card is 4111 ...") and
# object keys are not checked.
package runway.gateway

default allow := false

allow if not card_found

card_found if count(card_paths) > 0

# JSON-pointer-like paths (`/payment/card`) of the values that look like card numbers. The cheap
# type and size checks come first, in the rule bodies: most values fail them, and evaluating
# them inline is much faster than calling a function per value.
card_paths contains pointer if {
	walk(input.body, [path, value])
	is_string(value)
	count(value) >= 13
	count(value) <= 64
	luhn_valid(card_digits(value))
	pointer := concat("", [sprintf("/%v", [p]) | some p in path])
}

card_paths contains pointer if {
	walk(input.body, [path, value])
	is_number(value)
	value >= 1000000000000 # 13 digits
	value < 10000000000000000000 # 20 digits
	value == floor(value)
	luhn_valid(card_digits(format_int(value, 10)))
	pointer := concat("", [sprintf("/%v", [p]) | some p in path])
}

deny_reason := sprintf("request body carries a payment card number at %s", [sort(card_paths)[0]]) if card_found

digit_value := {"0": 0, "1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "6": 6, "7": 7, "8": 8, "9": 9}

# The digits of s as numbers, if s is 13-19 digits with optional spaces and dashes.
card_digits(s) := digits if {
	cleaned := replace(replace(trim_space(s), " ", ""), "-", "")
	n := count(cleaned)
	n >= 13
	n <= 19
	digits := [d | some c in split(cleaned, ""); d := digit_value[c]]
	count(digits) == n
	digits[0] != 0
}

luhn_valid(digits) if {
	n := count(digits)
	total := sum([luhn_term(d, (n - 1) - i) | some i, d in digits])
	total % 10 == 0
}

# pos counts from the rightmost digit (0); every second digit is doubled.
luhn_term(d, pos) := d if pos % 2 == 0

luhn_term(d, pos) := d * 2 if {
	pos % 2 == 1
	d * 2 <= 9
}

luhn_term(d, pos) := (d * 2) - 9 if {
	pos % 2 == 1
	d * 2 > 9
}

# --- tests (`runway policy test dlp.rego`) ---

test_luhn_valid_numbers if {
	luhn_valid(card_digits("4111 1111 1111 1111"))
	luhn_valid(card_digits("5555-5555-5555-4444"))
	luhn_valid(card_digits("378282246310005"))
}

test_luhn_invalid_numbers if {
	not luhn_valid(card_digits("4111 1111 1111 1112"))
	not card_digits("4111 1111 1111") # 12 digits
	not card_digits("4111 1111 1111 1111 1111") # 20 digits
	not card_digits("4111x1111y1111z1111")
}

test_card_in_nested_body_refused if {
	req := {"body": {"order": {"items": [{"note": "hi"}, {"card": "4111 1111 1111 1111"}]}}}
	not allow with input as req
	deny_reason == "request body carries a payment card number at /order/items/1/card" with input as req
}

test_numeric_card_refused if {
	not allow with input as {"body": {"pan": 5555555555554444}}
}

test_plain_body_allowed if {
	allow with input as {"body": {"order_id": "1234567890123", "amount": 4200, "tags": ["a", "b"]}}
}

test_no_body_allowed if {
	allow with input as {"method": "GET", "path": "/v1/orders"}
}
