package vmtest

import "testing"

func TestBoot(t *testing.T) {
	vm, took := bootVM(t, vmOpts{sharedMem: true})
	t.Logf("boot to healthy: %v", took)
	d := vm.debug()
	t.Logf("debug: %+v", d)
	t.Logf("console:\n%s", vm.Console())
}
