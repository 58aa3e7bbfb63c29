package main

// CPU time and memory of a proxy's processes, read from /proc. A proxy may
// be one process (mtlsproxy, HAProxy with -db, stunnel) or a master with
// worker children (nginx); every figure is summed over the process the
// harness started and all of its descendants.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// procStat is the part of /proc/PID/stat the harness uses.
type procStat struct {
	PID   int
	Comm  string
	PPID  int
	UTime uint64 // clock ticks
	STime uint64 // clock ticks
}

// parseProcStat parses the contents of /proc/PID/stat. The command name is
// in parentheses and may itself hold spaces and parentheses, so the fields
// after it are found from the last ')'.
func parseProcStat(data []byte) (procStat, error) {
	s := strings.TrimSpace(string(data))
	open := strings.IndexByte(s, '(')
	closing := strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return procStat{}, fmt.Errorf("proc stat: no command name in %q", truncate(s, 80))
	}
	pid, err := strconv.Atoi(strings.TrimSpace(s[:open]))
	if err != nil {
		return procStat{}, fmt.Errorf("proc stat: pid: %v", err)
	}
	// Fields after the command name, numbered from 3 (state) as in proc(5).
	rest := strings.Fields(s[closing+1:])
	field := func(n int) (uint64, error) {
		i := n - 3
		if i >= len(rest) {
			return 0, fmt.Errorf("proc stat: %d fields after the command name, need field %d", len(rest), n)
		}
		return strconv.ParseUint(rest[i], 10, 64)
	}
	ppid, err := field(4)
	if err != nil {
		return procStat{}, err
	}
	utime, err := field(14)
	if err != nil {
		return procStat{}, err
	}
	stime, err := field(15)
	if err != nil {
		return procStat{}, err
	}
	return procStat{PID: pid, Comm: s[open+1 : closing], PPID: int(ppid), UTime: utime, STime: stime}, nil
}

// procMem is the memory part of /proc/PID/status, in bytes.
type procMem struct {
	RSS uint64 // VmRSS
	HWM uint64 // VmHWM: peak resident set size
}

// parseProcStatus reads VmRSS and VmHWM from the contents of
// /proc/PID/status. Kernel threads have neither; they read as zero.
func parseProcStatus(data []byte) (procMem, error) {
	var m procMem
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		f := strings.Fields(value)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("proc status: %s: unexpected value %q", name, value)
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("proc status: %s: %v", name, err)
		}
		if name == "VmRSS" {
			m.RSS = kb * 1024
		} else {
			m.HWM = kb * 1024
		}
	}
	return m, sc.Err()
}

// descendants returns root and every process below it in the parent map
// (pid -> ppid), sorted.
func descendants(root int, parent map[int]int) []int {
	children := map[int][]int{}
	for pid, pp := range parent {
		children[pp] = append(children[pp], pid)
	}
	out := []int{root}
	seen := map[int]bool{root: true}
	for i := 0; i < len(out); i++ {
		for _, c := range children[out[i]] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	sort.Ints(out)
	return out
}

// procRoot is /proc; tests never read it.
const procRoot = "/proc"

// processTree returns root and its live descendants, from /proc/*/stat.
func processTree(root int) []int {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return []int{root}
	}
	parent := map[int]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		st, err := parseProcStat(data)
		if err != nil {
			continue
		}
		parent[pid] = st.PPID
	}
	return descendants(root, parent)
}

// usage is what one snapshot of a proxy's processes says.
type usage struct {
	PIDs  []int
	Ticks map[int]uint64 // utime+stime per pid
	RSS   uint64         // bytes, summed
	HWM   uint64         // bytes, summed
}

// snapshot reads CPU ticks and memory of root and its descendants.
func snapshot(root int) usage {
	u := usage{Ticks: map[int]uint64{}}
	for _, pid := range processTree(root) {
		dir := filepath.Join(procRoot, strconv.Itoa(pid))
		data, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue
		}
		st, err := parseProcStat(data)
		if err != nil {
			continue
		}
		u.PIDs = append(u.PIDs, pid)
		u.Ticks[pid] = st.UTime + st.STime
		if data, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
			if m, err := parseProcStatus(data); err == nil {
				u.RSS += m.RSS
				u.HWM += m.HWM
			}
		}
	}
	return u
}

// cpuTicksBetween is the CPU time the processes used from a to b. A
// process that appears only in b (a worker forked meanwhile) counts from
// zero; one that exited before b is lost, which the caller is told of.
func cpuTicksBetween(a, b usage) (ticks uint64, lost []int) {
	for pid, t := range b.Ticks {
		if t0, ok := a.Ticks[pid]; ok && t >= t0 {
			ticks += t - t0
		} else if !ok {
			ticks += t
		}
	}
	for pid := range a.Ticks {
		if _, ok := b.Ticks[pid]; !ok {
			lost = append(lost, pid)
		}
	}
	sort.Ints(lost)
	return ticks, lost
}

// resetPeakRSS asks the kernel to reset VmHWM to the current RSS of each
// process (clear_refs value 5, Linux 4.0 and later), so that the next
// peak is the peak of the next run. It reports whether every reset worked;
// if not, VmHWM is the peak since the process started.
func resetPeakRSS(pids []int) bool {
	ok := true
	for _, pid := range pids {
		if err := os.WriteFile(filepath.Join(procRoot, strconv.Itoa(pid), "clear_refs"), []byte("5"), 0); err != nil {
			ok = false
		}
	}
	return ok
}

// atClkTck is the auxiliary vector entry that holds the clock tick rate.
const atClkTck = 17

// parseAuxvClkTck finds AT_CLKTCK in the contents of /proc/self/auxv
// (pairs of native-endian machine words).
func parseAuxvClkTck(data []byte, wordSize int, order binary.ByteOrder) (uint64, bool) {
	word := func(b []byte) uint64 {
		if wordSize == 4 {
			return uint64(order.Uint32(b))
		}
		return order.Uint64(b)
	}
	for i := 0; i+2*wordSize <= len(data); i += 2 * wordSize {
		tag, val := word(data[i:]), word(data[i+wordSize:])
		if tag == 0 {
			break
		}
		if tag == atClkTck && val > 0 {
			return val, true
		}
	}
	return 0, false
}

// clockTicks is the unit of utime and stime: sysconf(_SC_CLK_TCK), which
// the kernel passes in the auxiliary vector. 100 on every Linux Go runs on.
func clockTicks() uint64 {
	data, err := os.ReadFile(filepath.Join(procRoot, "self", "auxv"))
	if err == nil {
		if v, ok := parseAuxvClkTck(data, strconv.IntSize/8, binary.NativeEndian); ok {
			return v
		}
	}
	return 100
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
