package host

import (
	"io"
	"net/http"
)

func newReq(method, url string, hdr map[string]string) (*http.Request, error) {
	req, err := http.NewRequest(method, url, io.Reader(nil))
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return req, nil
}
