package main

import (
	"encoding/binary"
	"reflect"
	"testing"
)

func TestParseProcStat(t *testing.T) {
	// nginx worker: fields after the name are state ppid pgrp session
	// tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime ...
	line := "4305 (nginx) S 4304 4304 17449 0 -1 4194624 1033 0 0 0 1234 567 0 0 20 0 1 0 183579 3133440 393 18446744073709551615\n"
	st, err := parseProcStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{PID: 4305, Comm: "nginx", PPID: 4304, UTime: 1234, STime: 567}
	if st != want {
		t.Errorf("got %+v, want %+v", st, want)
	}
}

func TestParseProcStatTrickyName(t *testing.T) {
	// A command name may hold spaces and parentheses.
	line := "77 (a) b (c)) R 1 77 77 0 -1 0 0 0 0 0 42 8 0 0 20 0 3 0 1 0 0"
	st, err := parseProcStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if st.Comm != "a) b (c)" || st.PPID != 1 || st.UTime != 42 || st.STime != 8 {
		t.Errorf("got %+v", st)
	}
}

func TestParseProcStatBad(t *testing.T) {
	for _, line := range []string{"", "12 nginx S 1", "x (a) S 1 2 3", "12 (a) S 1 2 3"} {
		if _, err := parseProcStat([]byte(line)); err == nil {
			t.Errorf("%q: no error", line)
		}
	}
}

func TestParseProcStatus(t *testing.T) {
	status := "Name:\tmtlsproxy\nVmPeak:\t 1300000 kB\nVmHWM:\t   21920 kB\nVmRSS:\t   14380 kB\nThreads:\t7\n"
	m, err := parseProcStatus([]byte(status))
	if err != nil {
		t.Fatal(err)
	}
	if m.HWM != 21920*1024 || m.RSS != 14380*1024 {
		t.Errorf("got %+v", m)
	}
	// Kernel threads have no Vm lines.
	if m, err := parseProcStatus([]byte("Name:\tkthreadd\nState:\tS (sleeping)\n")); err != nil || m != (procMem{}) {
		t.Errorf("kernel thread: %+v, %v", m, err)
	}
	if _, err := parseProcStatus([]byte("VmRSS:\t 12 MB\n")); err == nil {
		t.Error("unexpected unit: no error")
	}
}

func TestDescendants(t *testing.T) {
	parent := map[int]int{
		1:  0,
		10: 1,          // nginx master
		11: 10, 12: 10, // workers
		13: 11, // a worker's child
		20: 1,  // unrelated
		21: 20,
	}
	if got, want := descendants(10, parent), []int{10, 11, 12, 13}; !reflect.DeepEqual(got, want) {
		t.Errorf("descendants(10) = %v, want %v", got, want)
	}
	if got, want := descendants(99, parent), []int{99}; !reflect.DeepEqual(got, want) {
		t.Errorf("descendants(99) = %v, want %v", got, want)
	}
}

func TestCPUTicksBetween(t *testing.T) {
	a := usage{Ticks: map[int]uint64{10: 100, 11: 50, 12: 70}}
	b := usage{Ticks: map[int]uint64{10: 130, 11: 90, 14: 5}} // 12 exited, 14 forked
	ticks, lost := cpuTicksBetween(a, b)
	if ticks != 30+40+5 {
		t.Errorf("ticks %d, want 75", ticks)
	}
	if !reflect.DeepEqual(lost, []int{12}) {
		t.Errorf("lost %v, want [12]", lost)
	}
}

func TestParseAuxvClkTck(t *testing.T) {
	var data []byte
	for _, w := range []uint64{6, 4096, atClkTck, 250, 23, 0, 0, 0} { // AT_PAGESZ, AT_CLKTCK, AT_SECURE, AT_NULL
		data = binary.LittleEndian.AppendUint64(data, w)
	}
	if v, ok := parseAuxvClkTck(data, 8, binary.LittleEndian); !ok || v != 250 {
		t.Errorf("64-bit: %d %v", v, ok)
	}
	var data32 []byte
	for _, w := range []uint32{atClkTck, 100, 0, 0} {
		data32 = binary.BigEndian.AppendUint32(data32, w)
	}
	if v, ok := parseAuxvClkTck(data32, 4, binary.BigEndian); !ok || v != 100 {
		t.Errorf("32-bit: %d %v", v, ok)
	}
	if _, ok := parseAuxvClkTck(data[:16], 8, binary.LittleEndian); ok {
		t.Error("found AT_CLKTCK where there is none")
	}
}
