package auth

import (
	"encoding/base64"
	"errors"
	"net/http"
	"testing"

	"connectrpc.com/connect"

	"github.com/envd-go/envd/internal/state"
)

func TestRPCUser(t *testing.T) {
	basic := func(s string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(s)) }
	cases := []struct {
		name, auth, def string
		want, errMsg    string
	}{
		{name: "no header: default root", def: "root", want: "root"},
		{name: "basic user", auth: basic("root:"), def: "nobody-envdta", want: "root"},
		{name: "password ignored", auth: basic("root:whatever"), def: "root", want: "root"},
		{name: "unknown basic user", auth: basic("envdta-nope:"), def: "root", errMsg: "invalid username: 'envdta-nope'"},
		{name: "unknown default user", def: "envdta-gone", errMsg: "invalid default user: 'envdta-gone'"},
		{name: "bearer treated as absent", auth: "Bearer xyz", def: "root", want: "root"},
		{name: "bad base64 treated as absent", auth: "Basic !!!", def: "root", want: "root"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := state.New()
			st.SetDefaultUser(c.def)
			h := http.Header{}
			if c.auth != "" {
				h.Set("Authorization", c.auth)
			}
			u, err := RPCUser(h, st)
			if c.errMsg != "" {
				var ce *connect.Error
				if !errors.As(err, &ce) || ce.Code() != connect.CodeUnauthenticated || ce.Message() != c.errMsg {
					t.Fatalf("err = %v, want unauthenticated %q", err, c.errMsg)
				}
				return
			}
			if err != nil || u.Name != c.want {
				t.Fatalf("got %v, %v; want %s", u, err, c.want)
			}
		})
	}
}
