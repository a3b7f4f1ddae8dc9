package lifecycle

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkInit measures POST /init over loopback HTTP with a typical
// orchestrator body (fresh timestamp, token, env, user, workdir) and
// reports p50/p99. "fc" fetches the token hash from an MMDS stand-in on
// every request (token PUT + GET, the create/rotation path); "fast"
// re-sends the current token (no MMDS round trip).
func BenchmarkInit(b *testing.B) {
	for _, mode := range []string{"fast", "fc"} {
		b.Run(mode, func(b *testing.B) {
			e := newInitEnv(b)
			e.mmds.SetFields("sbx", "tpl", "", sha512hex("tok"))
			if mode == "fast" {
				e.st.SetToken([]byte("tok"))
			}
			c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}} // like the orchestrator
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for b.Loop() {
				body := fmt.Sprintf(`{"accessToken":"tok","timestamp":%q,"envVars":{"A":"1","B":"2"},"defaultUser":"root","defaultWorkdir":"/root"}`,
					time.Now().UTC().Format(time.RFC3339Nano))
				if mode == "fc" {
					e.st.SetToken(nil) // every request is a first-time setup checked against MMDS
				}
				start := time.Now()
				resp, err := c.Post(e.srv.URL+"/init", "application/json", strings.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat = append(lat, time.Since(start))
				if resp.StatusCode != 204 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
