package pid1

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// NetConfig is one interface described by a kernel ip= argument:
// ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>
// (the kernel's nfsroot syntax, which wrenn's hosts pass). The kernel
// itself only applies it when built with IP_PNP and a built-in NIC driver,
// so envd applies it after loading modules. Several ip= are allowed.
type NetConfig struct {
	Device   string
	Addr     netip.Prefix
	Gateway  netip.Addr // invalid = no default route
	Hostname string
	DNS      []netip.Addr
}

// ParseIPArgs returns the static configurations in cmdline. ip=off/none/dhcp
// and entries without a client address are ignored; a malformed address is
// an error.
func ParseIPArgs(cmdline string) ([]NetConfig, error) {
	var out []NetConfig
	var errs []error
	for _, arg := range strings.Fields(cmdline) {
		if arg == "--" {
			break // the rest belongs to init's argv
		}
		v, ok := strings.CutPrefix(arg, "ip=")
		if !ok {
			continue
		}
		f := strings.Split(v, ":")
		for len(f) < 9 {
			f = append(f, "")
		}
		if f[0] == "" || !strings.Contains(v, ":") {
			continue // ip=dhcp, ip=off, ...
		}
		client, err := netip.ParseAddr(f[0])
		if err != nil || !client.Is4() {
			errs = append(errs, fmt.Errorf("ip=%s: bad client address", v))
			continue
		}
		bits := 32
		if f[3] != "" {
			mask, err := netip.ParseAddr(f[3])
			if err != nil || !mask.Is4() {
				errs = append(errs, fmt.Errorf("ip=%s: bad netmask", v))
				continue
			}
			m := mask.As4()
			ones, total := net.IPMask(m[:]).Size()
			if total == 0 {
				errs = append(errs, fmt.Errorf("ip=%s: non-contiguous netmask", v))
				continue
			}
			bits = ones
		}
		nc := NetConfig{Device: f[5], Addr: netip.PrefixFrom(client, bits), Hostname: f[4]}
		if nc.Device == "" {
			nc.Device = "eth0"
		}
		if f[2] != "" {
			gw, err := netip.ParseAddr(f[2])
			if err != nil {
				errs = append(errs, fmt.Errorf("ip=%s: bad gateway", v))
				continue
			}
			nc.Gateway = gw
		}
		for _, d := range f[7:9] {
			if a, err := netip.ParseAddr(d); err == nil {
				nc.DNS = append(nc.DNS, a)
			}
		}
		out = append(out, nc)
	}
	return out, errors.Join(errs...)
}

// ConfigureNetwork brings lo up and applies each config: link up, address,
// default route, then hostname and /etc/resolv.conf when given. Devices
// can appear a moment after their driver loads, so each is waited for.
func ConfigureNetwork(cfgs []NetConfig) error {
	var errs []error
	if err := linkUp("lo"); err != nil {
		errs = append(errs, err)
	}
	var dns []string
	for _, c := range cfgs {
		if err := configure(c); err != nil {
			errs = append(errs, fmt.Errorf("configure %s: %w", c.Device, err))
		}
		if c.Hostname != "" {
			if err := setHostname(c.Hostname); err != nil {
				errs = append(errs, err)
			}
		}
		for _, d := range c.DNS {
			dns = append(dns, "nameserver "+d.String()+"\n")
		}
	}
	if len(dns) > 0 {
		if err := os.MkdirAll("/etc", 0o755); err == nil {
			if err := os.WriteFile("/etc/resolv.conf", []byte(strings.Join(dns, "")), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("write resolv.conf: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// deviceWait bounds how long a NIC may take to appear after its driver loads.
var deviceWait = 5 * time.Second

func configure(c NetConfig) error {
	var ifi *net.Interface
	var err error
	for deadline := time.Now().Add(deviceWait); ; {
		ifi, err = net.InterfaceByName(c.Device)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	if err := setLinkUp(ifi.Index); err != nil {
		return err
	}
	if err := addAddr(ifi.Index, c.Addr); err != nil {
		return err
	}
	if c.Gateway.IsValid() {
		return addDefaultRoute(ifi.Index, c.Gateway)
	}
	return nil
}

func linkUp(name string) error {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return err
	}
	return setLinkUp(ifi.Index)
}
