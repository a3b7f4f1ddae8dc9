package process

import (
	"encoding/base64"
	"encoding/binary"
	"slices"
)

// base64Pairs maps 12 input bits to their two output characters, the first
// in the low byte, so six input bytes become one 8-byte store. Output data
// events are base64 in the JSON codec (the SDK's); the standard library's
// byte-at-a-time encoder was the largest cost of streaming there.
var base64Pairs = func() (t [4096]uint16) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range t {
		t[i] = uint16(alphabet[i>>6]) | uint16(alphabet[i&63])<<8
	}
	return t
}()

// appendBase64 appends the padded standard base64 encoding of src to dst,
// exactly as base64.StdEncoding.AppendEncode does.
func appendBase64(dst, src []byte) []byte {
	n := base64.StdEncoding.EncodedLen(len(src))
	dst = slices.Grow(dst, n)
	out := dst[len(dst) : len(dst)+n]
	di, si := 0, 0
	// Two 6-byte groups per step; each 8-byte read uses its top 6 bytes, so
	// stop while 14 bytes remain readable.
	for ; len(src)-si >= 14; si, di = si+12, di+16 {
		s, o := src[si:si+14], out[di:di+16]
		v := binary.BigEndian.Uint64(s)
		u := binary.BigEndian.Uint64(s[6:])
		binary.LittleEndian.PutUint64(o, uint64(base64Pairs[v>>52])|
			uint64(base64Pairs[v>>40&0xfff])<<16|
			uint64(base64Pairs[v>>28&0xfff])<<32|
			uint64(base64Pairs[v>>16&0xfff])<<48)
		binary.LittleEndian.PutUint64(o[8:], uint64(base64Pairs[u>>52])|
			uint64(base64Pairs[u>>40&0xfff])<<16|
			uint64(base64Pairs[u>>28&0xfff])<<32|
			uint64(base64Pairs[u>>16&0xfff])<<48)
	}
	for ; len(src)-si >= 8; si, di = si+6, di+8 {
		v := binary.BigEndian.Uint64(src[si:])
		w := uint64(base64Pairs[v>>52]) |
			uint64(base64Pairs[v>>40&0xfff])<<16 |
			uint64(base64Pairs[v>>28&0xfff])<<32 |
			uint64(base64Pairs[v>>16&0xfff])<<48
		binary.LittleEndian.PutUint64(out[di:], w)
	}
	base64.StdEncoding.Encode(out[di:], src[si:])
	return dst[:len(dst)+n]
}
