"""Instructions per request in two callgrind dumps of `tessera serve`: a bearer run and a DPoP run.

A request is one access token signed (`ED25519_sign`), so each dump is divided by its own count. Prints the
totals, the proof verifications per request and their cost, what DPoP adds in all and in verifications,
and the functions whose own instructions grew the most.

usage: callgrind_per_request.py BEARER_DUMP DPOP_DUMP [ROWS]
"""

import collections
import re
import sys

SIGN = "aws_lc_0_47_0_ED25519_sign_no_self_test"
VERIFY = "aws_lc_0_47_0_ED25519_verify_no_self_test"


def parse(path):
    """Self and inclusive instructions and call counts per function name."""
    names, own, inclusive, calls = {}, collections.Counter(), collections.Counter(), collections.Counter()
    fn = callee = None
    pending = None

    def name(text):
        m = re.match(r"\((\d+)\)(?: (.*))?", text)
        if not m:
            return text
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), text)

    with open(path, errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                fn = name(line[3:])
            elif line.startswith("cfn="):
                callee = name(line[4:])
            elif line.startswith("calls="):
                pending = (callee, int(line[6:].split()[0]))
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                parts = line.split()
                if len(parts) < 2:
                    continue
                cost = int(parts[1])
                if pending:
                    target, n = pending
                    pending = None
                    calls[target] += n
                    if target != fn:
                        inclusive[fn] += cost
                else:
                    own[fn] += cost
                    inclusive[fn] += cost
    return own, inclusive, calls


def main():
    bearer, dpop = sys.argv[1], sys.argv[2]
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    b_own, _, b_calls = parse(bearer)
    d_own, d_inc, d_calls = parse(dpop)
    nb, nd = b_calls[SIGN], d_calls[SIGN]
    if not nb or not nd:
        sys.exit("callgrind_per_request: a dump has no signed tokens")
    per_b, per_d = sum(b_own.values()) / nb, sum(d_own.values()) / nd
    verifies = d_calls[VERIFY]
    one = d_inc[VERIFY] / max(verifies, 1)
    added = per_d - per_b
    print(f"bearer: {nb} requests, {per_b:,.0f} instructions each")
    print(f"DPoP:   {nd} requests, {per_d:,.0f} instructions each, "
          f"{verifies / nd:.3f} proof verifications each ({b_calls[VERIFY] / nb:.3f} in the bearer run)")
    print(f"one Ed25519 verification: {one:,.0f} instructions")
    print(f"DPoP adds {added:,.0f} instructions a request: {added / one:.3f} verifications "
          f"(the verification, and {added - one:,.0f} of handling)")
    print("\nfunctions whose own instructions per request grew most (bearer, DPoP, difference):")
    diff = sorted(((d_own[k] / nd - b_own[k] / nb, k) for k in set(b_own) | set(d_own)), reverse=True)
    for delta, k in diff[:rows]:
        print(f"{b_own[k] / nb:>10,.0f} {d_own[k] / nd:>10,.0f} {delta:>+10,.0f}  {k[:110]}")


if __name__ == "__main__":
    main()
