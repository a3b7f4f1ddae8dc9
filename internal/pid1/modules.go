package pid1

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ModuleInfo is what loading needs from a .ko file.
type ModuleInfo struct {
	Name    string   // from .modinfo name=, else the file name
	Path    string   //
	Depends []string // module names from .modinfo depends=
}

// ReadModuleInfo reads the .modinfo section of an uncompressed module.
func ReadModuleInfo(path string) (ModuleInfo, error) {
	mi := ModuleInfo{Path: path, Name: strings.ReplaceAll(strings.TrimSuffix(filepath.Base(path), ".ko"), "-", "_")}
	f, err := elf.Open(path)
	if err != nil {
		return mi, fmt.Errorf("open module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return mi, nil
	}
	data, err := sec.Data()
	if err != nil {
		return mi, fmt.Errorf("read .modinfo of %s: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			mi.Name = v
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d != "" {
					mi.Depends = append(mi.Depends, strings.ReplaceAll(d, "-", "_"))
				}
			}
		}
	}
	return mi, nil
}

// ModuleOrder returns the modules so that each comes after its
// dependencies. Dependencies not in the list are assumed built in.
func ModuleOrder(mods []ModuleInfo) []ModuleInfo {
	byName := map[string]ModuleInfo{}
	for _, m := range mods {
		byName[m.Name] = m
	}
	seen := map[string]bool{}
	var out []ModuleInfo
	var visit func(name string)
	visit = func(name string) {
		m, ok := byName[name]
		if !ok || seen[name] {
			return
		}
		seen[name] = true // also breaks (invalid) cycles
		for _, d := range m.Depends {
			visit(d)
		}
		out = append(out, m)
	}
	for _, m := range mods {
		visit(m.Name)
	}
	return out
}

// LoadModules loads every .ko below dir with finit_module(2), dependencies
// first. A missing dir is not an error (a kernel with everything built in);
// an already loaded module counts as loaded. Returns how many were loaded.
func LoadModules(dir string) (int, error) {
	var mods []ModuleInfo
	var errs []error
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(p, ".ko") {
			mi, err := ReadModuleInfo(p)
			if err != nil {
				errs = append(errs, err)
				return nil
			}
			mods = append(mods, mi)
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list modules in %s: %w", dir, err)
	}
	n := 0
	for _, m := range ModuleOrder(mods) {
		if err := loadModule(m.Path); err != nil {
			errs = append(errs, fmt.Errorf("load module %s: %w", m.Name, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}
