package files

import (
	"errors"
	"sort"
	"strconv"
	"strings"
)

// Negotiation failures, answered with 406 (protocol.md §3.5).
var (
	errNoEncoding       = errors.New("error parsing Accept-Encoding: no acceptable encoding found, supported: [gzip]")
	errIdentityRejected = errors.New("identity encoding not acceptable for Range or conditional request")
)

type coding struct {
	name string
	q    float64
}

// parseAcceptEncoding splits "gzip;q=0.5, identity" into codings with
// lowercased names; entries with an unparsable q are dropped.
func parseAcceptEncoding(h string) []coding {
	var out []coding
	for _, item := range strings.Split(h, ",") {
		name, params, _ := strings.Cut(item, ";")
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			continue
		}
		c := coding{name: name, q: 1}
		ok := true
		for _, p := range strings.Split(params, ";") {
			k, v, found := strings.Cut(strings.TrimSpace(p), "=")
			if !found || !strings.EqualFold(strings.TrimSpace(k), "q") {
				continue
			}
			q, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil || q < 0 || q > 1 || q != q {
				ok = false
				break
			}
			c.q = q
		}
		if ok {
			out = append(out, c)
		}
	}
	return out
}

// negotiate picks gzip (true) or identity (false) for a download.
// forceIdentity is set for Range and conditional requests.
func negotiate(header string, forceIdentity bool) (bool, error) {
	if strings.TrimSpace(header) == "" {
		return false, nil
	}
	cs := parseAcceptEncoding(header)
	identityExplicit, identityZero, starZero := false, false, false
	for _, c := range cs {
		switch c.name {
		case "identity":
			if c.q == 0 {
				identityZero = true
			} else {
				identityExplicit = true
			}
		case "*":
			if c.q == 0 {
				starZero = true
			}
		}
	}
	identityRejected := identityZero || (starZero && !identityExplicit)
	if forceIdentity {
		if identityRejected {
			return false, errIdentityRejected
		}
		return false, nil
	}
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].q > cs[j].q })
	for _, c := range cs {
		if c.q == 0 {
			continue
		}
		switch c.name {
		case "identity":
			return false, nil
		case "*":
			return identityRejected, nil
		case "gzip":
			return true, nil
		}
	}
	if identityRejected {
		return false, errNoEncoding
	}
	return false, nil
}
