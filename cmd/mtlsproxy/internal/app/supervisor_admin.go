package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy/admin"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// supervisorAdmin answers the admin endpoints for the workers: ready when
// every worker is, their metrics with a worker label, and a log level set
// on every worker. Readiness and metrics ask all workers at once, so that
// one slow worker costs its own time, not the sum.
func supervisorAdmin(procs []*workerProc, level zap.AtomicLevel) http.Handler {
	clients := make([]*http.Client, len(procs))
	for i, w := range procs {
		sock := w.admin
		clients[i] = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
			DisableKeepAlives: true,
		}}
	}
	ready := func() error {
		errs := fanOut(clients, func(_ int, c *http.Client) error {
			status, body, err := workerCall(c, http.MethodGet, "/readyz", "", nil)
			if err != nil {
				return err
			}
			if status != http.StatusOK {
				return errors.New(strings.TrimPrefix(strings.TrimSpace(body), "not ready: "))
			}
			return nil
		})
		for i, err := range errs {
			if err != nil {
				return fmt.Errorf("worker %d: %v", i, err)
			}
		}
		return nil
	}
	setLevel := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut {
			level.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 4096))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// The workers first: a level they refuse changes nothing here.
		for i, c := range clients {
			status, out, err := workerCall(c, http.MethodPut, "/loglevel", r.Header.Get("Content-Type"), body)
			switch {
			case err != nil || status >= 500:
				if err == nil {
					err = fmt.Errorf("%d %s", status, strings.TrimSpace(out))
				}
				http.Error(w, fmt.Sprintf("worker %d: %v", i, err), http.StatusBadGateway)
				return
			case status != http.StatusOK:
				// A bad request: every worker would refuse it, and so would
				// this process.
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = io.WriteString(w, out)
				return
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		level.ServeHTTP(w, r)
	})
	return admin.Handler(admin.Options{Ready: ready, Gatherer: workerGatherer(clients), Level: level, LevelHandler: setLevel})
}

// fanOut calls f for every worker's client at once and returns the
// errors by worker.
func fanOut(clients []*http.Client, f func(int, *http.Client) error) []error {
	errs := make([]error, len(clients))
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(i, c)
		}()
	}
	wg.Wait()
	return errs
}

// workerCall makes one admin request to a worker.
func workerCall(c *http.Client, method, path, contentType string, body []byte) (int, string, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://worker"+path, rd)
	if err != nil {
		return 0, "", err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(out), err
}

// workerGatherer gathers every worker's metrics, all at once, and labels
// each series with worker="N".
func workerGatherer(clients []*http.Client) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		fams := make([][]*dto.MetricFamily, len(clients))
		errs := fanOut(clients, func(i int, c *http.Client) error {
			var err error
			fams[i], err = workerMetrics(c)
			return err
		})
		byName := map[string]*dto.MetricFamily{}
		var all []error
		for i := range clients {
			if errs[i] != nil {
				all = append(all, fmt.Errorf("worker %d: %w", i, errs[i]))
				continue
			}
			mergeFamilies(byName, fams[i], strconv.Itoa(i))
		}
		out := make([]*dto.MetricFamily, 0, len(byName))
		for _, f := range byName {
			out = append(out, f)
		}
		sort.Slice(out, func(a, b int) bool { return out[a].GetName() < out[b].GetName() })
		return out, errors.Join(all...)
	})
}

// protoFormat asks promhttp for length-delimited protocol buffers.
const protoFormat = `application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited`

func workerMetrics(c *http.Client) ([]*dto.MetricFamily, error) {
	req, err := http.NewRequest(http.MethodGet, "http://worker/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", protoFormat)
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	var fams []*dto.MetricFamily
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err != nil {
			if errors.Is(err, io.EOF) {
				return fams, nil
			}
			return nil, err
		}
		fams = append(fams, mf)
	}
}

// mergeFamilies adds fams to byName, each series labelled worker=index.
func mergeFamilies(byName map[string]*dto.MetricFamily, fams []*dto.MetricFamily, index string) {
	for _, f := range fams {
		for _, m := range f.Metric {
			m.Label = append(m.Label, &dto.LabelPair{Name: proto.String("worker"), Value: proto.String(index)})
			sort.Slice(m.Label, func(a, b int) bool { return m.Label[a].GetName() < m.Label[b].GetName() })
		}
		if have, ok := byName[f.GetName()]; ok {
			have.Metric = append(have.Metric, f.Metric...)
		} else {
			byName[f.GetName()] = f
		}
	}
}
