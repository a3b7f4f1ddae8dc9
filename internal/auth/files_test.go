package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/envd-go/envd/internal/state"
)

// sdkSign signs like the JS SDK does, independently of Sign.
func sdkSign(path, op, user, token string, exp string) string {
	payload := path + ":" + op + ":" + user + ":" + token
	if exp != "" {
		payload += ":" + exp
	}
	sum := sha256.Sum256([]byte(payload))
	return "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
}

func TestSignMatchesSDK(t *testing.T) {
	for _, c := range [][5]string{
		{"/home/user/a.txt", OpRead, "user", "tok", ""},
		{"", OpWrite, "", "tok", "1700000000"},
		{"rel/ü ß", OpRead, "root", "t:o:k", "5"},
	} {
		if got, want := Sign(c[0], c[1], c[2], []byte(c[3]), c[4]), sdkSign(c[0], c[1], c[2], c[3], c[4]); got != want {
			t.Errorf("Sign%v = %s, want %s", c, got, want)
		}
	}
}

func fileReq(method string, q url.Values, header string) *http.Request {
	r := httptest.NewRequest(method, "/files?"+q.Encode(), nil)
	if header != "" {
		r.Header.Set(TokenHeader, header)
	}
	return r
}

func TestAuthorizeFile(t *testing.T) {
	const tok = "secret-token"
	now := time.Unix(1_800_000_000, 0)
	future := strconv.FormatInt(now.Unix()+60, 10)
	past := strconv.FormatInt(now.Unix()-1, 10)
	sig := func(path, op, user, exp string) string { return sdkSign(path, op, user, tok, exp) }
	v := func(kv ...string) url.Values {
		q := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		return q
	}
	cases := []struct {
		name    string
		noToken bool
		method  string
		q       url.Values
		header  string
		status  int // 0 = allowed
		msg     string
	}{
		{name: "no token set: open", noToken: true, method: "GET", q: v("path", "/x")},
		{name: "no token set: malformed expiration still 400", noToken: true, method: "GET", q: v("signature_expiration", "abc"),
			status: 400, msg: `Invalid format for parameter signature_expiration: error binding string parameter: strconv.ParseInt: parsing "abc": invalid syntax`},
		{name: "header matches", method: "GET", q: v("path", "/x"), header: tok},
		{name: "header wrong", method: "GET", q: v("path", "/x", "signature", sig("/x", OpRead, "", "")), header: "nope",
			status: 401, msg: "access token present in header but does not match"},
		{name: "missing signature", method: "GET", q: v("path", "/x"), status: 401, msg: "missing signature query parameter"},
		{name: "valid, no user, no expiry", method: "GET", q: v("path", "/x", "signature", sig("/x", OpRead, "", ""))},
		{name: "valid write with user and expiry", method: "POST", q: v("path", "/x", "username", "user", "signature", sig("/x", OpWrite, "user", future), "signature_expiration", future)},
		{name: "valid, no path param", method: "GET", q: v("signature", sig("", OpRead, "", ""))},
		{name: "raw path is signed, not the cleaned one", method: "GET", q: v("path", "/a/../x", "signature", sig("/x", OpRead, "", "")),
			status: 401, msg: "invalid signature"},
		{name: "expired", method: "GET", q: v("path", "/x", "signature", sig("/x", OpRead, "", past), "signature_expiration", past),
			status: 401, msg: "signature is already expired"},
		{name: "expires exactly now is still valid", method: "GET", q: v("path", "/x", "signature", sig("/x", OpRead, "", strconv.FormatInt(now.Unix(), 10)), "signature_expiration", strconv.FormatInt(now.Unix(), 10))},
		{name: "expired but tampered: signature checked first", method: "GET", q: v("path", "/y", "signature", sig("/x", OpRead, "", past), "signature_expiration", past),
			status: 401, msg: "invalid signature"},
		{name: "tampered path", method: "GET", q: v("path", "/etc/shadow", "signature", sig("/x", OpRead, "", "")), status: 401, msg: "invalid signature"},
		{name: "tampered user", method: "GET", q: v("path", "/x", "username", "root", "signature", sig("/x", OpRead, "user", "")), status: 401, msg: "invalid signature"},
		{name: "user signed but absent", method: "GET", q: v("path", "/x", "signature", sig("/x", OpRead, "root", "")), status: 401, msg: "invalid signature"},
		{name: "wrong operation", method: "POST", q: v("path", "/x", "signature", sig("/x", OpRead, "", "")), status: 401, msg: "invalid signature"},
		{name: "expiration stripped", method: "GET", q: v("path", "/x", "signature", sig("/x", OpRead, "", future)), status: 401, msg: "invalid signature"},
		{name: "expiration extended", method: "GET", q: v("path", "/x", "signature", sig("/x", OpRead, "", future), "signature_expiration", future+"0"), status: 401, msg: "invalid signature"},
		{name: "empty signature", method: "GET", q: v("path", "/x", "signature", ""), status: 401, msg: "invalid signature"},
		{name: "signature for another token", method: "GET", q: v("path", "/x", "signature", sdkSign("/x", OpRead, "", "other", "")), status: 401, msg: "invalid signature"},
		{name: "malformed expiration", method: "GET", q: v("path", "/x", "signature", "v1_x", "signature_expiration", "1.5"),
			status: 400, msg: `Invalid format for parameter signature_expiration: error binding string parameter: strconv.ParseInt: parsing "1.5": invalid syntax`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := state.New()
			if !c.noToken {
				st.SetToken([]byte(tok))
			}
			op := OpRead
			if c.method == "POST" {
				op = OpWrite
			}
			r := fileReq(c.method, c.q, c.header)
			e := AuthorizeFile(r, st, op, now)
			if c.status == 0 {
				if e != nil {
					t.Fatalf("denied: %d %s", e.Status, e.Message)
				}
				if msg, ok := CheckFileAccess(r, st, op, now); !ok {
					t.Fatalf("CheckFileAccess denied: %s", msg)
				}
				return
			}
			if e == nil {
				t.Fatal("allowed, want denied")
			}
			if e.Status != c.status || e.Message != c.msg {
				t.Fatalf("got %d %q, want %d %q", e.Status, e.Message, c.status, c.msg)
			}
			rec := httptest.NewRecorder()
			e.Write(rec)
			if rec.Code != c.status {
				t.Fatalf("written status %d", rec.Code)
			}
			if c.status == 401 {
				want := `{"code":401,"message":"` + c.msg + "\"}\n"
				if rec.Body.String() != want || rec.Header().Get("Content-Type") != "application/json; charset=utf-8" {
					t.Fatalf("body %q (%s), want %q", rec.Body.String(), rec.Header().Get("Content-Type"), want)
				}
			} else if rec.Body.String() != c.msg+"\n" || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
				t.Fatalf("body %q (%s)", rec.Body.String(), rec.Header().Get("Content-Type"))
			}
		})
	}
}

// The SDK URL-encodes the signature, so '+' and '/' arrive escaped.
func TestAuthorizeFileEscapedSignature(t *testing.T) {
	st := state.New()
	for i := 0; ; i++ {
		tok := "tok" + strconv.Itoa(i)
		s := sdkSign("/x", OpRead, "", tok, "")
		if !strings.ContainsAny(s, "+/") {
			continue
		}
		st.SetToken([]byte(tok))
		r := httptest.NewRequest("GET", "/files?path=%2Fx&signature="+url.QueryEscape(s), nil)
		if e := AuthorizeFile(r, st, OpRead, time.Now()); e != nil {
			t.Fatalf("escaped signature %s refused: %s", s, e.Message)
		}
		return
	}
}

func TestSignatureCompareIsConstantTime(t *testing.T) {
	if reflect.ValueOf(signatureCompare).Pointer() != reflect.ValueOf(subtle.ConstantTimeCompare).Pointer() {
		t.Fatal("signature comparison is not crypto/subtle.ConstantTimeCompare")
	}
	orig := signatureCompare
	calls := 0
	signatureCompare = func(a, b []byte) int { calls++; return orig(a, b) }
	t.Cleanup(func() { signatureCompare = orig })
	st := state.New()
	st.SetToken([]byte("k"))
	AuthorizeFile(fileReq("GET", url.Values{"signature": {"v1_bad"}}, ""), st, OpRead, time.Now())
	if calls != 1 {
		t.Fatalf("signature check bypassed signatureCompare (%d calls)", calls)
	}
}

func FuzzAuthorizeFile(f *testing.F) {
	f.Add("/x", "user", "v1_abc", "123", "tok", false)
	f.Add("", "", "", "", "t", true)
	f.Add("/a b", "root", "v1_+/", "-1", "x", false)
	f.Add("p", "u", "v1_", "99999999999999999999", "k", true)
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, path, user, sig, exp, tok string, signIt bool) {
		st := state.New()
		st.SetToken([]byte(tok))
		q := url.Values{"path": {path}, "username": {user}}
		if exp != "" {
			q.Set("signature_expiration", exp)
		}
		n, perr := strconv.ParseInt(exp, 10, 64)
		if signIt && (exp == "" || perr == nil) {
			e := ""
			if exp != "" {
				e = strconv.FormatInt(n, 10)
			}
			sig = sdkSign(path, OpRead, user, tok, e)
		}
		q.Set("signature", sig)
		r := fileReq("GET", q, "")
		e := AuthorizeFile(r, st, OpRead, now)
		switch {
		case exp != "" && perr != nil:
			if e == nil || e.Status != 400 {
				t.Fatalf("malformed expiration %q accepted: %v", exp, e)
			}
		case e == nil:
			// Allowed: must be a correct, unexpired signature.
			want := ""
			if exp != "" {
				want = strconv.FormatInt(n, 10)
			}
			if sig != sdkSign(path, OpRead, user, tok, want) || (exp != "" && n < now.Unix()) {
				t.Fatalf("allowed an invalid request: %v", q)
			}
		case e.Status != 401:
			t.Fatalf("status %d", e.Status)
		}
	})
}
